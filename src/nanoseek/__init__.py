"""nanoseek: a small, complete reproduction of the DeepSeek-R1 system.

The DeepSeek-V3 model (MLA, DeepSeekMoE, MTP), GRPO with verifiable rewards (R1-Zero and the
four-stage R1 recipe), evaluation (pass@1 over k samples, cons@k) and an OpenAI/DeepSeek-compatible
server, sized to run on a laptop CPU and to scale out with existing engines.
"""

__version__ = "0.1.0"


from nanoseek.errors import NanoseekError


def load_model(path, **kwargs):
    """Load a model from a run directory, checkpoint folder, Hugging Face folder or short name.

    See ``nanoseek.model.hf.load_model``.
    """
    from nanoseek.model.hf import load_model as _load

    return _load(path, **kwargs)
