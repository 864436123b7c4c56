"""Built-in quantity-aware task: a procedural coloured-shapes dataset, a small text-conditioned flow model
trained on it, and the counting rewards.

- `shapes`: dataset generator, prompt language ("2 blue squares and 4 yellow circles"), evaluation prompts.
- `model`: the flow model, built-in model "shapes" (`load_shapes_model`), plus plain ODE evaluation.
- `counting`: the paper's counting reward, built-in reward "counting", and exact-count accuracy.
- `heldout`: a CNN count predictor, built-in reward "counting_heldout" (never optimised by search).
- `train`, `train_heldout`: the scripts that produce the shipped weights in `flowscale_ray/assets/`.

The names are listed in the registries' tables (`models.registry`, `rewards.registry`); nothing here
registers itself, and the model does not import the rewards.
"""
