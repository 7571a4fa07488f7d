"""Loading an original-layout checkpoint with its own code (``MODEL_TRUST_REMOTE_CODE``).

transformers 5.x's ``from_pretrained`` relies on state that ``PreTrainedModel.post_init()``
sets up (``all_tied_weights_keys`` first). OpenGVLab's ``modeling_internvl_chat.py`` called
``post_init()`` only from its 2025-08-26 revision on, so the code shipped with older
checkpoints (the public InternVL2.5-1B among them, and every fine-tune made from it) fails
with ``'InternVLChatModel' object has no attribute 'all_tied_weights_keys'``. The class is
loaded here the way ``AutoModel`` loads it, through a subclass that calls ``post_init()``
after the checkpoint's ``__init__`` when, and only when, that ``__init__`` left it out:
code that already calls it runs unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.models.auto.auto_factory import add_generation_mixin_to_remote_model

from .devices import Runtime

logger = logging.getLogger(__name__)

# Set by post_init(); its absence after __init__ means the code predates the upstream fix.
POST_INIT_MARKER = "all_tied_weights_keys"


def with_post_init(cls: type[Any]) -> type[Any]:
    """``cls`` with ``post_init()`` run after its ``__init__`` when that left it out."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        if not hasattr(self, POST_INIT_MARKER):
            logger.warning(
                "remote code %s.%s does not call post_init() (written before transformers "
                "5); calling it after __init__",
                cls.__module__,
                cls.__name__,
                extra={"model_compat": "post_init"},
            )
            self.post_init()
            self._rpi_post_init_added = True

    namespace = {"__init__": init, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), namespace)


def model_class(path: Path) -> tuple[Any, type[Any]]:
    """The checkpoint's config and its ``AutoModel`` class, as ``AutoModel`` resolves them."""
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=True)
    reference = config.auto_map["AutoModel"]
    cls: Any = get_class_from_dynamic_module(reference, str(path))
    cls.register_for_auto_class(auto_class=AutoModel)
    with_mixin: type[Any] = add_generation_mixin_to_remote_model(cls)  # type: ignore[no-untyped-call]
    return config, with_mixin


def load_remote_code_model(path: Path, runtime: Runtime) -> Any:
    """The checkpoint's own model class, loaded from ``path`` (post_init compatible)."""
    config, cls = model_class(path)
    return with_post_init(cls).from_pretrained(
        str(path),
        config=config,
        dtype=runtime.dtype,
        low_cpu_mem_usage=True,
        use_flash_attn=runtime.attn_implementation == "flash_attention_2",
    )


def post_init_added(model: Any) -> bool:
    """Whether loading ``model`` needed the compatibility step."""
    return bool(getattr(model, "_rpi_post_init_added", False))
