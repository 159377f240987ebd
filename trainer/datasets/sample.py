"""A small, learnable, locally generated sample of flat records (no network, no shared data).

Each record draws a primary arXiv category (and sometimes a related second one); its title and abstract mix
topic words of its categories with common filler words, so the categories are learnable from the text.
Coreness is the documented proxy of the categories (see ``config/coreness_proxy.yaml``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from models.records.labels import CorenessProxy

_TOPICS: dict[str, str] = {
    "hep-th": "string brane duality holography supersymmetry conformal ads gauge moduli compactification",
    "hep-ph": "collider higgs neutrino quark gluon lhc parton decay dark-matter flavour",
    "hep-ex": "detector luminosity trigger atlas cms cross-section measurement events tevatron calorimeter",
    "gr-qc": "black-hole gravitational-wave spacetime horizon einstein cosmological inflation metric ligo curvature",
    "astro-ph.CO": "cmb galaxy-cluster redshift dark-energy baryon survey lensing hubble planck structure",
    "nucl-th": "nucleon nuclei shell-model isospin pairing hadron heavy-ion qcd-matter deuteron fission",
    "cond-mat.str-el": "electron correlated hubbard magnetism spin-liquid fermion lattice kondo superconductor",
    "quant-ph": "qubit entanglement quantum-circuit decoherence photon teleportation measurement-basis cavity",
    "math.AG": "variety scheme sheaf cohomology moduli-space curve divisor algebraic morphism stack",
    "cs.LG": "neural-network training gradient dataset classifier deep-learning benchmark optimisation loss",
}
# Second categories that plausibly come with a primary one.
RELATED: dict[str, list[str]] = {
    "hep-th": ["gr-qc", "hep-ph", "math.AG"],
    "hep-ph": ["hep-ex", "astro-ph.CO", "nucl-th"],
    "hep-ex": ["hep-ph"],
    "gr-qc": ["hep-th", "astro-ph.CO"],
    "astro-ph.CO": ["gr-qc", "hep-ph"],
    "nucl-th": ["hep-ph"],
    "cond-mat.str-el": ["quant-ph"],
    "quant-ph": ["cond-mat.str-el", "cs.LG"],
    "math.AG": ["hep-th"],
    "cs.LG": ["quant-ph"],
}
WEIGHTS = [14, 16, 8, 12, 9, 6, 10, 10, 7, 8]
_FILLER = (
    "we study the of a new model and in this paper show that results for with using our approach method "
    "present analysis propose based on data theory framework recent effects properties high low large small"
)
TOPICS = {category: words.split() for category, words in _TOPICS.items()}
FILLER = _FILLER.split()


def generate_sample(n: int, seed: int = 0) -> list[dict]:
    """``n`` flat records (id, title, abstract, categories, coreness), the same for the same seed."""
    rng = random.Random(seed)
    proxy = CorenessProxy.load()
    names = list(TOPICS)
    records = []
    for i in range(n):
        primary = rng.choices(names, weights=WEIGHTS)[0]
        categories = [primary]
        if rng.random() < 0.3:
            categories.append(rng.choice(RELATED[primary]))
        topic_words = [w for cat in categories for w in TOPICS[cat]]

        def words(count: int, topical: float, topic_words: list[str] = topic_words) -> str:
            return " ".join(rng.choice(topic_words) if rng.random() < topical else rng.choice(FILLER)
                            for _ in range(count))

        records.append({
            "id": f"sample-{seed}-{i}",
            "title": words(rng.randint(4, 9), 0.5).capitalize(),
            "abstract": words(rng.randint(30, 70), 0.25).capitalize() + ".",
            "categories": categories,
            "coreness": proxy.label(categories),
        })
    return records


def write_sample(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write :func:`generate_sample` as JSON lines to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in generate_sample(n, seed):
            out.write(json.dumps(record) + "\n")
    return path
