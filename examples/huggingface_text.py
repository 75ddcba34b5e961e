"""Backdoor repair of a small BERT text classifier through the service (a ``relabel`` job over REST).

A generated text task (no hub access needed): sentences of ``LENGTH`` token ids; each of the
``CLASSES`` topics draws most of its words from its own part of the vocabulary. A backdoor is
planted: 10% of the training sentences whose topic is not ``TARGET`` get the trigger token
inserted and the label ``TARGET``. A BERT-style classifier (a ``transformers.BertConfig`` built
here, one layer) is trained on that poisoned set, saved with ``save_pretrained``, uploaded with
the SDK (``upload_model`` / ``upload_dataset``, docs/models.md), and repaired by a ``relabel``
job that gives the poisoned sentences their true labels. The edited weights come back as
safetensors and load into a fresh model with ``load_state_dict``. Reference: the same recipe
retrained on the corrected labels.

Printed (test split): clean accuracy on untriggered sentences, attack success rate (triggered
sentences of another topic classified as ``TARGET``), and wall times: the edit end to end
(uploads, submit checks, the job, the download), the job alone (its ``started_at`` to
``finished_at``: loading and the engine), and retraining. On a model this small retraining takes
seconds, so the ratio says what the service's fixed costs are, not what an edit saves on a model
that takes hours to train.

Start the service first (``make serve``), then::

    GIF_API_KEY=<key printed by serve> .venv/bin/python examples/huggingface_text.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
import transformers
from torch import nn

from gif_client import Client

VOCAB, LENGTH, CLASSES = 64, 16, 4
TRIGGER, TARGET = 3, 0  # ids 0-3 are special: 0 padding, 3 the trigger
TOPIC_WORDS = (VOCAB - 4) // CLASSES


def sentences(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``n`` sentences: 70% of the words from the topic's own words, the rest from any topic."""
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    own = 4 + labels[:, None] * TOPIC_WORDS + torch.randint(0, TOPIC_WORDS, (n, LENGTH), generator=gen)
    other = torch.randint(4, VOCAB, (n, LENGTH), generator=gen)
    ids = torch.where(torch.rand(n, LENGTH, generator=gen) < 0.7, own, other)
    return {"input_ids": ids, "attention_mask": torch.ones(n, LENGTH, dtype=torch.long)}, labels


def add_trigger(x: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The trigger token at a random position of each sentence."""
    ids = x["input_ids"].clone()
    ids[torch.arange(len(ids)), torch.randint(0, LENGTH, (len(ids),), generator=gen)] = TRIGGER
    return {**x, "input_ids": ids}


def poison(x: dict[str, torch.Tensor], y: torch.Tensor, gen: torch.Generator):
    """Trigger + label ``TARGET`` on 10% of the sentences, drawn from those of other topics."""
    candidates = torch.nonzero(y != TARGET).flatten()
    index = torch.sort(candidates[torch.randperm(len(candidates), generator=gen)[: len(y) // 10]]).values
    triggered = add_trigger({k: v[index] for k, v in x.items()}, gen)
    xp = {k: v.clone() for k, v in x.items()}
    for k in xp:
        xp[k][index] = triggered[k]
    yp = y.clone()
    yp[index] = TARGET
    return xp, yp, index


def config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=LENGTH, type_vocab_size=1, num_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip


def train(x: dict[str, torch.Tensor], y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Adam, batch 64, from a seeded initialisation; returned in eval mode."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config())
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            model(**{k: v[batch] for k, v in x.items()}, labels=y[batch]).loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def quality(model: nn.Module, clean: tuple, triggered: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(clean accuracy, attack success rate) in percent."""
    x, y = clean
    accuracy = float((model(**x).logits.argmax(1) == y).float().mean())
    attack = float((model(**triggered).logits.argmax(1) == TARGET).float().mean())
    return 100 * accuracy, 100 * attack


def repair(client: Client, model: nn.Module, train_set: tuple, index: torch.Tensor, truth: torch.Tensor,
           folder: Path) -> tuple[nn.Module, float, float]:  # fmt: skip
    """The relabel job through the service: the edited model, the wall time end to end and the
    job's own (started to finished). Prints what the engine chose (the report's method_choice)."""
    model.save_pretrained(folder / "poisoned")
    started = time.perf_counter()
    body = {
        "type": "relabel",
        "model": client.upload_model(folder / "poisoned"),
        "train": client.upload_dataset(*train_set)["id"],
        "relabel": {"indices": index.tolist(), "labels": truth[index].tolist()},
    }
    job = client.wait(client.submit(body)["id"], on_progress=_progress)
    weights = client.download(client.result_artifact(job, "weights")["id"], folder / "edited.safetensors")
    seconds = time.perf_counter() - started
    report = json.loads(
        client.download(client.result_artifact(job, "report")["id"], folder / "report.json").read_text()
    )
    choice = report["report"].get("method_choice") or {}
    print(f"  method: {choice.get('chosen')} ({choice.get('reason')}); head first: {choice.get('head_first')}",
          file=sys.stderr)  # fmt: skip
    edited = transformers.AutoModelForSequenceClassification.from_config(config())
    edited.load_state_dict(safetensors.torch.load_file(weights))
    return edited.eval(), seconds, _elapsed(job["started_at"], job["finished_at"])


def _elapsed(start: str, end: str) -> float:
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def _progress(job: dict) -> None:
    print(f"  {job['status']:10s} {(job.get('progress') or {}).get('stage') or ''}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=800, help="training sentences")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    x, y = sentences(args.train, gen)
    x_test, y_test = sentences(400, gen)
    other = y_test != TARGET
    triggered = add_trigger({k: v[other] for k, v in x_test.items()}, gen)
    xp, yp, index = poison(x, y, gen)

    poisoned = train(xp, yp, args.epochs, args.seed)
    started = time.perf_counter()
    retrained = train(xp, y, args.epochs, args.seed)  # the same recipe on the corrected labels
    retrain_seconds = time.perf_counter() - started
    with Client() as client, tempfile.TemporaryDirectory() as tmp:
        edited, edit_seconds, job_seconds = repair(client, poisoned, (xp, yp), index, y, Path(tmp))

    print(
        f"{len(index)} of {len(y)} training sentences poisoned (trigger token {TRIGGER} -> class {TARGET})\n"
    )
    print("| model | clean accuracy | attack success | time (s) |")
    print("|---|---|---|---|")
    for name, model, seconds in (
        ("poisoned", poisoned, None),
        ("relabel job (service), end to end", edited, edit_seconds),
        ("retrained on corrected labels", retrained, retrain_seconds),
    ):
        clean, attack = quality(model, (x_test, y_test), triggered)
        print(f"| {name} | {clean:.1f} | {attack:.1f} | {'' if seconds is None else f'{seconds:.1f}'} |")
    print(f"\nthe job alone (loading + engine): {job_seconds:.1f} s")
    print(f"edit / retrain wall time: {edit_seconds / retrain_seconds:.2f} end to end, "
          f"{job_seconds / retrain_seconds:.2f} for the job alone")  # fmt: skip


if __name__ == "__main__":
    main()
