"""The architectures as Flax modules, built from `evit_jax.nn` layers: the EfficientViT
backbones (`backbone`), classification and segmentation heads (`heads`, `fusion`) and task
models (`cls`, `seg`), super-resolution (`sr`) and EfficientViT-SAM (`sam/`). Nothing here
knows the zoo's names; `evit_jax.zoo` assembles these parts into its entries."""
