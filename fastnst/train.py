"""Train a style network: ``python -m fastnst.train style=starry [key=value ...]``.

A thin Hydra entry point: it composes ``configs/train.yaml`` with your overrides and hands the
plain config to :func:`fastnst.training.pipeline.fit`. ``--help`` lists the config groups,
``--cfg job`` prints the composed config without training.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fastnst.resources import CONFIG_DIR

log = logging.getLogger("fastnst.train")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    from fastnst.training.data import DataError
    from fastnst.training.module import NonFiniteLossError
    from fastnst.training.pipeline import ConfigError, fit
    from fastnst.training.style import StyleImageError
    from fastnst.training.vgg import VGGWeightsError

    run_dir = Path(HydraConfig.get().runtime.output_dir)  # the resolved run_dir (also in DDP child processes)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        model_path = fit(plain, run_dir)  # type: ignore[arg-type]
    except (ConfigError, DataError, StyleImageError, VGGWeightsError) as e:
        log.error("%s", e)
        sys.exit(2)
    except NonFiniteLossError as e:
        log.error("%s", e)
        sys.exit(3)
    except Exception as e:
        if type(e).__name__ == "MissingMandatoryValue":
            log.error("a required config value is missing: %s", str(e).splitlines()[0])
            sys.exit(2)
        raise
    if model_path is not None:
        print(f"model written to {model_path}\napply it with: python -m fastnst.apply -m {model_path} -o out.jpg photo.jpg")


if __name__ == "__main__":
    main()
