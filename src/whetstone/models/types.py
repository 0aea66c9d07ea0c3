"""Names for the model and tokenizer types that pass between Whetstone's modules.

For type checkers only: import them under `if TYPE_CHECKING:` (every module has
`from __future__ import annotations`), so that importing a module does not import torch,
transformers or peft (`whetstone --help` and the store stay fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from whetstone.models.label_head import LabelHeadModel

    # A causal language model: a base model, or one wrapped by PEFT with its adapters.
    CausalLM: TypeAlias = PreTrainedModel | PeftModel
    # What inference answers with: a causal LM, or a classify task's label head on one.
    InferenceModel: TypeAlias = CausalLM | LabelHeadModel
    Tokenizer: TypeAlias = PreTrainedTokenizerBase
