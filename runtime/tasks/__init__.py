"""What a loaded model can do beyond ``run``: generate, translate, fill-mask, next-sentence, embed.

Runtime only: numpy plus the model's backend. ``graphs`` opens the artifact's KV-cache graphs,
``prompts`` turns ids or text into padded batches within the position budget, ``sampling`` picks
tokens, and ``generate``, ``translate`` and ``bert`` are the tasks.
"""
