"""Helper library for the course "Multimodal instruction tuning for chest X-ray report generation".

One module per pipeline stage (see ``shared/design.md``); notebooks call into it.
"""

from .config import get_profile, notebook_defaults, pick_profile, print_config, seed_everything

__version__ = "0.1.0"
__all__ = [
    "get_profile",
    "notebook_defaults",
    "pick_profile",
    "print_config",
    "seed_everything",
    "__version__",
]
