"""Conversion and distillation recipes: turn a softmax transformer into an efficient model and
measure what it costs and what it keeps.

``teacher`` provides the transformer (any transformers causal LM, or a tiny byte-level
Llama pre-trained here on the embedded standard-library corpus); each recipe module builds a
student from it, trains it in steps, and reports quality against the teacher.
"""
