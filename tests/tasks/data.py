"""Small learnable labelled data for the fine-tuning tests, generated and seeded (no download): review sentences
whose sentiment is decided by their adjectives and negation."""

from __future__ import annotations

import random

POSITIVE = "good great excellent wonderful delightful brilliant enjoyable superb pleasant charming".split()
NEGATIVE = "bad awful terrible boring dull poor disappointing weak horrible tedious".split()
SUBJECTS = ["the movie", "the film", "this book", "the acting", "the plot", "the music", "the ending", "the cast"]


def _clause(rng: random.Random) -> tuple[str, bool]:
    positive = rng.random() < 0.5
    negated = rng.random() < 0.25
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    return f"{rng.choice(SUBJECTS)} was {'not ' if negated else ''}{adj}", positive != negated


def sentiment(n: int, seed: int) -> list[dict]:
    """classify: {"text", "label": "positive" | "negative"}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, pos = _clause(rng)
        rows.append({"text": text.capitalize() + ".", "label": "positive" if pos else "negative"})
    return rows


def same_sentiment(n: int, seed: int) -> list[dict]:
    """pair: {"text", "text_pair", "label": 1 if both have the same sentiment else 0}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        (a, pa), (b, pb) = _clause(rng), _clause(rng)
        rows.append({"text": a.capitalize() + ".", "text_pair": b.capitalize() + ".", "label": int(pa == pb)})
    return rows


def positivity(n: int, seed: int) -> list[dict]:
    """regress: {"text", "label": the share of positive clauses among three}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        clauses = [_clause(rng) for _ in range(3)]
        text = ", ".join(t for t, _ in clauses).capitalize() + "."
        rows.append({"text": text, "label": sum(p for _, p in clauses) / 3})
    return rows


FIRST = ["john", "mary", "peter", "anna", "paul", "linda", "george", "susan"]
LAST = ["smith", "jones", "brown", "taylor", "wilson", "davies", "evans", "thomas"]
CITIES = [["paris"], ["london"], ["new", "york"], ["berlin"], ["los", "angeles"], ["madrid"], ["rome"]]
FRAMES = [
    ("{p} lives in {c} .", None),
    ("yesterday {p} flew to {c} .", None),
    ("{c} is where {p} works .", None),
    ("the weather in {c} was cold .", "no person"),
    ("{p} likes coffee .", "no city"),
]


def people_and_places(n: int, seed: int) -> list[dict]:
    """tag: {"tokens", "tags"} with PER (one or two words) and LOC (one or two words) entities, IOB2 tags."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        frame, _ = rng.choice(FRAMES)
        person = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
        city = rng.choice(CITIES)
        tokens, tags = [], []
        for piece in frame.split():
            words, kind = (person, "PER") if piece == "{p}" else (city, "LOC") if piece == "{c}" else ([piece], None)
            for k, w in enumerate(words):
                tokens.append(w)
                tags.append("O" if kind is None else ("B-" if k == 0 else "I-") + kind)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli", "stark industries", "wayne enterprises"]


def questions(n: int, seed: int, filler: int = 0) -> list[dict]:
    """qa: {"id", "question", "context", "answers": {"text", "answer_start"}}: a context of three facts (with
    `filler` random words before them), a question about one."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        a, b, c = rng.sample(FIRST, 3)
        city, company, pet = " ".join(rng.choice(CITIES)), rng.choice(COMPANIES), rng.choice(["cat", "dog", "parrot"])
        words = " ".join(rng.choice(SUBJECTS).split()[-1] for _ in range(filler))
        facts = [
            (f"{a} lives in {city} .", f"where does {a} live ?", city),
            (f"{b} works at {company} .", f"where does {b} work ?", company),
            (f"{c} owns a {pet} .", f"what does {c} own ?", pet),
        ]
        rng.shuffle(facts)
        context = (words + " " if words else "") + " ".join(f for f, _, _ in facts)
        fact, question, answer = rng.choice(facts)
        start = context.index(fact) + fact.index(answer, len(fact.split()[0]))
        rows.append(
            {
                "id": f"q{k}",
                "question": question,
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return rows


SYLLABLES = "ka lo mi su te ra no vi da pe zu fo gi ba ho".split()
FUNCTION_WORDS = "the a of and to in is was".split()


def corpus(n_docs: int, seed: int, topics: int = 16) -> list[list[str]]:
    """Pretraining documents (lists of sentences): each about one of `topics` topics, whose own 25 words (made of
    syllables) fill its sentences between common function words. Next-sentence prediction is learnable (a random
    B is from another topic 15 times in 16), and so is masked LM (a word's topic narrows it down)."""
    rng = random.Random(seed)
    vocab = [
        [rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(SYLLABLES) for _ in range(25)]
        for _ in range(topics)
    ]
    docs = []
    for _ in range(n_docs):
        words = vocab[rng.randrange(topics)]
        doc = []
        for _ in range(rng.randint(4, 9)):
            sent = [
                rng.choice(words) if rng.random() < 0.7 else rng.choice(FUNCTION_WORDS)
                for _ in range(rng.randint(6, 14))
            ]
            doc.append(" ".join(sent) + " .")
        docs.append(doc)
    return docs


def write_corpus(path, docs: list[list[str]]) -> str:
    """BERT's text format: a sentence per line, a blank line between documents."""
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    return str(path)
