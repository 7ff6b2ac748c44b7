"""The policy: a causal LM seen as prompts in, completions out, and its generation engines."""
