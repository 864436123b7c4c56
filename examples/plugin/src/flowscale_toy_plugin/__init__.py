"""Example flowscale_ray plugin (see docs/plugins.md).

- model `toy_gaussian` (`model.toy_gaussian`): the exact flow of one isotropic Gaussian, any interpolant.
- reward `toy_target` (`reward.TargetReward`): minus the squared distance to a target point.
- method `sequential_bon` (`method.SequentialBestOfN`): Best-of-N drawn in several rounds.

Nothing here registers itself: the entry points in pyproject.toml name these objects, and flowscale_ray
imports a module only when a job uses its name.
"""
