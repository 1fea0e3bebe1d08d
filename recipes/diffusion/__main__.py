"""Standalone entry point: ``python -m recipes.diffusion model=medsegdiff_16c loss=mse ...``.

Hydra composes ``conf/config.yaml`` with the command-line overrides; the run logs to
``cfg.tracking`` and checkpoints into Hydra's output directory unless
``training.checkpoint_dir`` points elsewhere (pointing at an existing one resumes it).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recipes.diffusion import CONFIG_DIR, CONFIG_NAME


# An absolute config_path: a relative one would be looked up as the package
# ``recipes.diffusion.conf`` whenever ``main`` is imported rather than run with ``-m``.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    from recipes.diffusion.train import train  # torch/MONAI only once the config is valid

    result = train(cfg)
    print(result)
    if result.status != "done":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
