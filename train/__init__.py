"""forgeline.train: objectives (CLM, MLM + NSP, seq2seq), corpus batches and the training loop.

Training sits beside the pipeline, not inside it: it takes a model from ``forgeline.define`` and
writes a checkpoint that ``forgeline build --weights`` exports and compiles.
"""
