"""Training and evaluation data of the tasks: tfds / folder sources and their decoders
(`sources`), SAM's image + instance-mask sources and examples (`sam_sources`, `sam`), and the
super-resolution pairs (`sr`). The embedded `evit_shapes` set is the library's
(`evit_jax.data`)."""
