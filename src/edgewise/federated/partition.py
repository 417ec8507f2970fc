"""Split a dataset across simulated clients: IID, or label skew drawn from Dirichlet(alpha). Seeded."""

from __future__ import annotations

import numpy as np

from edgewise.errors import DataError


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    if scheme == "iid":
        return "iid", None
    kind, _, alpha = scheme.partition(":")
    if kind == "dirichlet":
        try:
            a = float(alpha)
        except ValueError as e:
            raise DataError(f"dirichlet needs alpha, e.g. dirichlet:0.5 (got {scheme!r})") from e
        if a <= 0:
            raise DataError(f"dirichlet alpha must be > 0, got {a}")
        return "dirichlet", a
    raise DataError(f"partition must be 'iid' or 'dirichlet:ALPHA', got {scheme!r}")


def partition(y: np.ndarray, clients: int, scheme: str = "iid", seed: int = 0, min_size: int = 2,
              tries: int = 100) -> list[np.ndarray]:
    """Index arrays, one per client. Dirichlet: for each class, its samples are dealt to clients in
    proportions drawn from Dir(alpha); redrawn until every client has at least `min_size` samples."""
    kind, alpha = parse_scheme(scheme)
    if clients < 1:
        raise DataError("need at least one client")
    if clients * min_size > len(y):
        raise DataError(f"{len(y)} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(y)), clients)]
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise DataError(f"dirichlet:{alpha} left a client with under {min_size} samples in {tries} draws; "
                    "use fewer clients or a larger alpha")
