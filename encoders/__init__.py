"""Text → vector for coldstream: offline model loading, device/precision choice, micro-batching,
and the item/user text builders.

Import from the submodules (``encoders.model``, ``encoders.batcher``, ``encoders.texts``,
``encoders.bench``, ``encoders.config``); this package file imports nothing, so code that only
builds texts (``encoders.texts``) does not pay for importing torch.
"""
