"""The defaults of a request from the keeper, in one place for every path.

`rbee infer` and `rbee chat` (their options), InferOptions (the full path)
and LeanArgs (the lean path) all read them here. Standard library only: the
lean path imports it.
"""

TEMPERATURE = 0.7
TOP_P = 0.95
LOAD_TIMEOUT_S = 300.0  # seconds to wait for a worker to load its model
QUEUE_TIMEOUT_S = 600.0  # seconds a request may wait for its turn on the worker
RETRY = 3  # attempts to reach the hive
N_CTX = 2048
RAW_MAX_TOKENS = 256  # a raw completion has no end of turn: cap it (a paragraph fits)
