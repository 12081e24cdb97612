"""The Hydra config tree (YAML only), importable as the package ``conf`` so that every entry point finds it by
module (``pkg://conf``) from any directory. The schemas are in ``pp_runtime/config.py``."""
