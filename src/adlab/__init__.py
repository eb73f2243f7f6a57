from importlib.metadata import version

from omegaconf import DictConfig, OmegaConf

__version__ = version("adlab")


def _stored(key: str, composed: object, _root_: DictConfig) -> object:
    """``${adlab_stored:KEY,COMPOSED}``: a re-evaluation's stored value (see
    :func:`adlab.checkpoint.stored_value`); registered on import so Hydra's run dir can use it."""
    from adlab.checkpoint import stored_value

    return stored_value(key, composed, _root_)


if not OmegaConf.has_resolver("adlab_stored"):
    OmegaConf.register_new_resolver("adlab_stored", _stored)
