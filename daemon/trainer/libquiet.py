"""What the model libraries print while a model loads that a user can do nothing about, silenced in the processes
that load one for a person (`overnight ask`, `chat`, `export --merge`, the Try tab)."""
from __future__ import annotations

import logging
import warnings


def quiet_model_loading() -> None:
    """Call before importing peft: it imports bitsandbytes, whose CPU-kernel notice is noise."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # transformers 5 warns about its own renamed attribute when peft reads it
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
