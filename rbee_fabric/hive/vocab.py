"""Count a prompt's tokens with a model's vocabulary, without loading its weights.

llama-cpp-python is imported on first use only (the hive starts without it),
and the vocabulary of the last few models is kept, so a second count is fast.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

_KEEP = 2
_lock = threading.Lock()
_vocabs: OrderedDict[str, Any] = OrderedDict()


def count_tokens(model_path: str, text: str) -> int:
    """Tokens of text (BOS included), as the worker's llama.cpp will count them.

    Blocking: call it in a thread.
    """
    with _lock:
        llm = _vocabs.get(model_path)
        if llm is None:
            import llama_cpp

            llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
            _vocabs[model_path] = llm
            while len(_vocabs) > _KEEP:
                _vocabs.popitem(last=False)[1].close()
        _vocabs.move_to_end(model_path)
        return len(llm.tokenize(text.encode(), add_bos=True, special=True))
