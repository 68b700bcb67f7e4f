"""Regenerate the built-in controlled-sentiment preference data (prefopt/assets/sentiment_*.json*).

    python experiments/make_sentiment_pairs.py            # ~3 min on 2 CPU cores, deterministic

The prompts are written here by hand: everyday topics crossed with a few neutral requests for an
opinion, so the model's answer can go either way. Train and held-out prompts use disjoint topics.
For each train prompt the reference model (SmolLM2-135M-Instruct, the default policy's starting point)
samples two completions at temperature 1 with fixed seeds; VADER's compound score (the ground-truth
reward, as in the DPO paper's IMDb task where a sentiment classifier plays that role) picks the chosen
one. Pairs whose two scores tie carry no preference and are dropped (the count is printed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from prefopt.generation import SampleSettings, sample
from prefopt.io import atomic_write_json, atomic_write_text, dumps
from prefopt.models import load_model, load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "prefopt" / "assets"

TRAIN_TOPICS = [
    "a rainy Monday morning", "the new coffee shop on the corner", "taking the bus to work", "your neighbour's dog",
    "a long flight", "learning to cook", "the last movie you watched", "a crowded supermarket", "your first job",
    "moving to a new city", "a weekend at the beach", "doing laundry", "a visit to the dentist", "online shopping",
    "a power outage", "the local library", "a road trip", "waking up early", "a family dinner", "your old school",
    "a job interview", "running a marathon", "a snowy day", "a birthday party", "waiting in line at the bank",
    "a new smartphone", "gardening", "a hospital waiting room", "a concert", "the office printer", "a camping trip",
    "a traffic jam", "learning a new language", "a street market", "a thunderstorm", "a long meeting",
    "a hotel stay", "an old friend calling", "a museum visit", "the gym", "a train delay", "baking bread",
    "a city park", "a group project", "the first day of spring", "a broken umbrella", "a music lesson",
    "a night shift", "a farmers market", "cleaning the kitchen", "a chess game", "a lost wallet",
    "a football match", "a quiet evening at home", "a video call", "a small town", "a mountain hike",
    "a ferry ride", "a cooking class", "an art exhibition",
]
HELDOUT_TOPICS = [
    "a Sunday afternoon", "the city bus", "a picnic", "a science fair", "a bookshop", "a wedding",
    "a power nap", "a rainy vacation", "a pottery class", "a crowded train", "a yoga class", "a used car",
    "a theater play", "a new recipe", "a dinner party", "the morning commute", "a bike ride", "a parking lot",
    "a garage sale", "a lake at dawn", "an airport lounge", "a board game night", "a school reunion", "a zoo",
]
FORMS = [
    "Write two sentences about {}.",
    "Tell me briefly how you feel about {}.",
    "Describe {} in one or two sentences.",
]


def prompts_for(topics: list[str], forms: list[str]) -> list[str]:
    # Each topic gets two of the three forms, rotating, so forms are balanced without a full cross.
    return [forms[(i + k) % len(forms)].format(topic) for i, topic in enumerate(topics) for k in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()

    train_prompts = prompts_for(TRAIN_TOPICS, FORMS)
    heldout_prompts = prompts_for(HELDOUT_TOPICS, FORMS)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32")
    analyzer = SentimentIntensityAnalyzer()

    messages = [[{"role": "user", "content": p}] for p in train_prompts]
    samples = []
    for k in range(2):
        settings = SampleSettings(max_new_tokens=args.max_new_tokens, temperature=1.0,
                                  batch_size=20, seed=args.seed + 100_000 * k)
        samples.append(sample(model, tokenizer, messages, settings))

    pairs, ties = [], 0
    for i, prompt in enumerate(train_prompts):
        a, b = samples[0][i], samples[1][i]
        score_a = analyzer.polarity_scores(a["text"])["compound"]
        score_b = analyzer.polarity_scores(b["text"])["compound"]
        if score_a == score_b or not a["text"] or not b["text"]:
            ties += 1
            continue
        (chosen, s_c), (rejected, s_r) = sorted([(a, score_a), (b, score_b)], key=lambda t: -t[1])
        pairs.append({
            "prompt": prompt,
            "chosen": chosen["text"],
            "rejected": rejected["text"],
            "score_chosen": s_c,
            "score_rejected": s_r,
            "chosen_finished": chosen["finished"],
            "rejected_finished": rejected["finished"],
        })

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "sentiment_prompts.json", {
        "about": "Written for prefopt; see experiments/make_sentiment_pairs.py.",
        "train": train_prompts,
        "heldout": heldout_prompts,
    })
    atomic_write_text(args.out / "sentiment_pairs.jsonl", "".join(dumps(p) + "\n" for p in pairs))
    mean_chosen = sum(p["score_chosen"] for p in pairs) / len(pairs)
    mean_rejected = sum(p["score_rejected"] for p in pairs) / len(pairs)
    print(json.dumps({"prompts": len(train_prompts), "pairs": len(pairs), "dropped_ties_or_empty": ties,
                      "heldout_prompts": len(heldout_prompts), "mean_score_chosen": round(mean_chosen, 4),
                      "mean_score_rejected": round(mean_rejected, 4)}))


if __name__ == "__main__":
    main()
