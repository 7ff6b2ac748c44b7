"""Serving: a DeepSeek-compatible chat-completions API with streamed ``reasoning_content``, a
continuous-batching engine, and a web chat app (``nanoseek serve``, ``nanoseek chat``).

Modules: ``reasoning`` (streaming think-block splitter), ``textstream`` (incremental detokenizer,
stop strings, one choice's pipeline), ``runner`` (per-step model execution and batch surgery),
``engine`` (the background generation thread), ``chat_model`` (model + tokenizer + chat template),
``protocol`` (wire format and errors), ``app`` (FastAPI routes), ``static/`` (the web app).
FastAPI and uvicorn are imported only by ``app``.
"""
