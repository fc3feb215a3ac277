"""Training and evaluation data: tfds / folder sources (`sources`), the embedded
`evit_shapes` dataset (`shapes`, its tfds `builder`) and the super-resolution pairs (`sr`)."""
