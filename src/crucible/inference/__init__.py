"""The in-container model server: an OpenAI-compatible ASGI app over an inference engine.

``crucible.inference.server.create_app(config)`` builds the app; ``python -m
crucible.inference.serve`` runs it alone; ``python -m crucible.inference.finetune`` trains a
LoRA adapter that the app serves. Heavy libraries (torch, transformers, peft, llama_cpp,
vllm) are imported only inside the engines, never when this package is imported.
"""
