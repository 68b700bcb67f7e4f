"""Regenerate the built-in controlled-sentiment preference data (prefopt/assets/sentiment_*.json*).

    python experiments/make_sentiment_pairs.py                 # prompts and pairs: ~3 min on 2 CPU cores
    python experiments/make_sentiment_pairs.py --prompts-only  # sentiment_prompts.json alone, in a second

The prompts are written here by hand: everyday topics crossed with a few neutral requests for an
opinion, so the model's answer can go either way. Train and held-out prompts use disjoint topics (checked
below, as is that no held-out prompt is a training pair's prompt). The held-out list is 128 topics x 2 forms =
256 prompts; the first 48 (the first 24 topics) are the original list, unchanged, so ``benchmark.num_prompts=48``
(the default) runs the same prompts as before and a larger ``num_prompts`` only appends. ``--prompts-only``
rewrites the prompt file without sampling, keeping sentiment_pairs.jsonl as it is (the pairs were sampled with
``prefopt.generation.sample``, whose per-batch seeds this script keeps, so the full command still reproduces them).
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
    # Added for the loss laboratory (issue 11): 104 more topics, so the benchmark can use 256 prompts.
    "a karaoke night", "a flea market", "a water park", "an ice rink", "a drive-in cinema", "a botanical garden",
    "a bowling alley", "a county fair", "a tram ride", "a public swimming pool", "a laundromat", "a barbershop",
    "a bakery at dawn", "a night bus", "a hardware store", "a ski lift", "a lighthouse", "a vineyard tour",
    "a fishing trip", "a pet shop", "a music festival", "a comedy show", "a cable car", "a sushi restaurant",
    "a college lecture", "a job fair", "a haunted house", "a planetarium", "a car wash", "a waiting room at the vet",
    "a village fete", "a ballet recital", "an escape room", "a sailing lesson", "a ghost tour", "a food truck",
    "a rooftop garden", "a quiz night", "a pharmacy queue", "a moving truck", "a paint and sip class",
    "a public library sale", "a morning jog", "a late-night diner", "a bicycle repair shop", "a charity run",
    "a science museum", "a ferris wheel", "a beach bonfire", "a home renovation", "a spelling bee",
    "a family reunion", "a thrift store", "a tea ceremony", "a jazz club", "a birdwatching walk",
    "a minigolf course", "a driving test", "a house party", "a piano recital", "a farm visit", "a tattoo parlour",
    "a cruise ship", "a sleepover", "a flower show", "a dog park", "a chemistry lab", "a shopping mall",
    "a campfire story", "a treehouse", "a pumpkin patch", "a city marathon", "a street parade",
    "a second-hand bookshop", "a holiday market", "a nature documentary", "a language exchange", "a hot air balloon",
    "a cooking competition", "a kite festival", "a poetry reading", "a dance class", "a craft fair",
    "a science podcast", "a robotics club", "a sandcastle contest", "a public debate", "a snow day off school",
    "a hiking trail map", "a window seat on a plane", "a long queue at the post office", "a neighbourhood barbecue",
    "a retirement party", "an open-air concert", "a rainy bus stop", "a library study room", "a surprise visit",
    "a photography walk", "a cinema premiere", "a local newspaper", "a volunteer shift", "a repair cafe",
    "a night market", "a stargazing evening",
]
FORMS = [
    "Write two sentences about {}.",
    "Tell me briefly how you feel about {}.",
    "Describe {} in one or two sentences.",
]


def prompts_for(topics: list[str], forms: list[str]) -> list[str]:
    # Each topic gets two of the three forms, rotating, so forms are balanced without a full cross.
    return [forms[(i + k) % len(forms)].format(topic) for i, topic in enumerate(topics) for k in (0, 1)]


def check_disjoint(train_prompts: list[str], heldout_prompts: list[str], pairs_path: Path) -> None:
    """Held-out prompts must be new to the model: no repeated topic, none shared with training, and no held-out
    prompt among the training pairs' prompts (the pairs file as it stands, when it exists)."""
    for name, topics in (("TRAIN_TOPICS", TRAIN_TOPICS), ("HELDOUT_TOPICS", HELDOUT_TOPICS)):
        repeated = sorted({t for t in topics if topics.count(t) > 1})
        if repeated:
            raise SystemExit(f"{name} repeats {repeated}")
    shared = sorted(set(TRAIN_TOPICS) & set(HELDOUT_TOPICS))
    if shared:
        raise SystemExit(f"topics both in training and held out: {shared}")
    trained = set(train_prompts)
    if pairs_path.is_file():
        trained |= {json.loads(line)["prompt"] for line in pairs_path.read_text().splitlines() if line.strip()}
    overlap = sorted(set(heldout_prompts) & trained)
    if overlap:
        raise SystemExit(f"held-out prompts that training sees: {overlap[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--prompts-only", action="store_true",
                        help="rewrite sentiment_prompts.json only (no model, the pairs file is kept)")
    args = parser.parse_args()

    train_prompts = prompts_for(TRAIN_TOPICS, FORMS)
    heldout_prompts = prompts_for(HELDOUT_TOPICS, FORMS)
    check_disjoint(train_prompts, heldout_prompts, args.out / "sentiment_pairs.jsonl")
    prompts_file = {"about": "Written for prefopt; see experiments/make_sentiment_pairs.py.",
                    "train": train_prompts, "heldout": heldout_prompts}
    if args.prompts_only:
        atomic_write_json(args.out / "sentiment_prompts.json", prompts_file)
        print(json.dumps({"prompts": len(train_prompts), "heldout_prompts": len(heldout_prompts)}))
        return
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
    atomic_write_json(args.out / "sentiment_prompts.json", prompts_file)
    atomic_write_text(args.out / "sentiment_pairs.jsonl", "".join(dumps(p) + "\n" for p in pairs))
    mean_chosen = sum(p["score_chosen"] for p in pairs) / len(pairs)
    mean_rejected = sum(p["score_rejected"] for p in pairs) / len(pairs)
    print(json.dumps({"prompts": len(train_prompts), "pairs": len(pairs), "dropped_ties_or_empty": ties,
                      "heldout_prompts": len(heldout_prompts), "mean_score_chosen": round(mean_chosen, 4),
                      "mean_score_rejected": round(mean_rejected, 4)}))


if __name__ == "__main__":
    main()
