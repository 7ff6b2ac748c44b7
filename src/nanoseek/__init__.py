"""nanoseek: a small, complete reproduction of the DeepSeek-R1 system.

The DeepSeek-V3 model (MLA, DeepSeekMoE, MTP), GRPO with verifiable rewards (R1-Zero and the
four-stage R1 recipe), evaluation (pass@1 over k samples, cons@k) and an OpenAI/DeepSeek-compatible
server, sized to run on a laptop CPU and to scale out with existing engines.

The public API follows the ecosystem's convention:

    from nanoseek import load_model, save_model
    model = load_model("runs/zero")          # a run dir, checkpoint, Hugging Face folder or short name
    model.save_pretrained("exported")        # loads with transformers.AutoModelForCausalLM too
    save_model(model, "exported", tokenizer)  # the same, plus the tokenizer files and chat template
"""

__version__ = "0.1.0"

from nanoseek.errors import NanoseekError
from nanoseek.model.hf import save_model
from nanoseek.model.load import load_model

__all__ = ["NanoseekError", "__version__", "load_model", "save_model"]
