#!/usr/bin/env python3
"""Writes meft-eval's canonical-scoring fixture: tricky predictions scored by the published rules,
written out here from their definitions, so that `meft eval --predictions` can be checked against
them (meft-eval/tests/canonical_scoring.rs).

- SQuAD v1.1 EM / F1: lower-case, drop `string.punctuation`, blank the words a / an / the,
  `" ".join(s.split())`; F1 over whitespace tokens with multiset overlap (0 when nothing is shared).
- TriviaQA v1.0 EM: underscores to spaces, lower-case, `string.punctuation` plus ‘ ’ ´ ` to spaces,
  blank the articles, join the split, strip; max over the aliases.
- GSM8K as lm-eval's `gsm8k` task scores it: the `strict-match` filter (first `#### (-?[0-9.,]+)`)
  and the `flexible-extract` filter (last `(-?[$0-9.,]{2,})|(-?[0-9]+)`), `[invalid]` when nothing
  matches, then exact match after removing `,`, `$`, everything up to the last `#### ` and a final
  `.`, case-insensitively, on both the extraction and the gold solution.

Run by hand (standard library only):
    python3 tools/make_scoring_fixture.py meft-eval/tests/fixtures/canonical_scores.jsonl
"""
import json
import re
import string
import sys
from collections import Counter

ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(ARTICLES.sub(" ", s).split())


def squad_f1_one(prediction, gold):
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def trivia_normalize(s):
    punct = set(string.punctuation + "\u2018\u2019\u00b4`")
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in punct else ch for ch in s)
    return " ".join(ARTICLES.sub(" ", s).split()).strip()


def lm_eval_filter(text, pattern, select):
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    match = found[select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def lm_eval_exact(extracted, gold_solution):
    def clean(s):
        for pattern in [",", r"\$", r"(?s).*#### ", r"\.$"]:
            s = re.sub(pattern, "", s)
        return s.lower()

    return float(clean(extracted) == clean(gold_solution))


QA = [
    ("The Beatles", ["beatles"]),
    ("  the   Eiffel  tower. ", ["Eiffel Tower"]),
    ("an apple a day", ["apple day"]),
    ("theory", ["the ory"]),
    ("Dont stop", ["Don't stop"]),
    ("rock_and_roll", ["rock and roll"]),
    ("\u2018Hamlet\u2019", ["Hamlet"]),
    ("\u201cHamlet\u201d", ["Hamlet"]),
    ("caf\u00e9", ["CAF\u00c9"]),
    ("Stra\u00dfe", ["strasse"]),
    ("1,000", ["1000"]),
    ("3.14", ["314"]),
    ("New\u00a0York", ["new york"]),
    ("New\x1cYork", ["new york"]),
    ("New\u200bYork", ["new york"]),
    ("", ["anything"]),
    ("something", [""]),
    ("the", ["a"]),
    ("Paris Paris France", ["Paris France", "France"]),
    ("George Washington Carver", ["George Washington", "Carver"]),
    ("A.B.C.", ["abc"]),
    ("\u00b4quoted`", ["quoted"]),
    ("The The", ["the"]),
    ("\u0130stanbul", ["istanbul"]),
    ("42nd street", ["42nd Street", "forty-second street"]),
    ("Mr. Smith-Jones", ["mr smithjones", "mr smith jones"]),
]

GSM8K = [
    ("So the total is 72.\n#### 72", "Natalia sold 48 + 24 = <<48+24=72>>72 clips.\n#### 72"),
    ("#### 1,000.", "He paid 1000 dollars.\n#### 1000"),
    ("The answer is $1,000.", "#### 1000"),
    ("#### 1000.0", "#### 1000"),
    ("It costs 3-4 dollars", "#### -4"),
    ("It costs 3-4 dollars", "#### 4"),
    ("no number here", "#### 5"),
    ("#### -7", "#### -7"),
    ("####  7", "#### 7"),
    ("#### .5", "#### .5"),
    ("Step 1: 5. Step 2: 10", "#### 10"),
    ("The answer is 12.", "#### 12"),
    ("#### 3 then #### 4", "#### 3"),
    ("$5", "#### 5"),
    ("x = 9, y = 10.", "#### 10"),
    ("7 apples", "#### 7"),
    ("-", "#### 0"),
    ("1.2.3", "#### 1.2.3"),
    ("We get 18#### 18", "#### 18"),
]


def main(path):
    rows = []
    for prediction, golds in QA:
        rows.append({
            "kind": "qa",
            "prediction": prediction,
            "golds": golds,
            "squad_em": float(any(squad_normalize(prediction) == squad_normalize(g) for g in golds)),
            "squad_f1": max(squad_f1_one(prediction, g) for g in golds),
            "trivia_em": float(any(trivia_normalize(prediction) == trivia_normalize(g) for g in golds)),
        })
    for prediction, gold in GSM8K:
        strict = lm_eval_filter(prediction, r"#### (\-?[0-9\.\,]+)", 0)
        flexible = lm_eval_filter(prediction, r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)
        rows.append({
            "kind": "gsm8k",
            "prediction": prediction,
            "gold": gold,
            "strict_extracted": strict,
            "strict": lm_eval_exact(strict, gold),
            "flexible_extracted": flexible,
            "flexible": lm_eval_exact(flexible, gold),
        })
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
