"""``ringfl privacy plan`` and ``ringfl audit``: the parsers and handlers (ringfl.cli only registers them)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ringfl.errors import ConfigError


def _cmd_plan(args: argparse.Namespace) -> int:
    from ringfl.privacy.dp_sgd import DpSgdConfig, plan

    config = DpSgdConfig(mechanism="dp-sgd", clip=args.clip, delta=args.delta,
                         target_epsilon=args.epsilon if args.noise is None else None, noise_multiplier=args.noise)
    if args.epsilon is None and args.noise is None:
        raise ConfigError("privacy plan needs --epsilon (σ for a target) or --noise (ε of a σ)")
    p = plan(config, num_samples=args.samples, batch_size=args.batch_size, rounds=args.rounds, epochs=args.epochs)
    eps = "unbounded (no noise)" if math.isinf(p.epsilon) else f"{p.epsilon:.4f}"
    print(f"sample rate q = {args.batch_size}/{args.samples} = {p.sample_rate:.6g}; "
          f"{p.steps_per_round} steps per round, {p.total_steps} in {p.rounds} rounds")
    print(f"noise multiplier sigma = {p.noise_multiplier:.4f}  (noise sd = sigma * clip = "
          f"{p.noise_multiplier * args.clip:.4g})")
    print(f"epsilon = {eps} at delta = {args.delta:g} per peer over the whole run (RDP accountant)")
    sigma = math.ceil(p.noise_multiplier * 1e4) / 1e4  # rounded up: the printed σ keeps the target
    print(f"config:\n  training:\n    batch_size: {args.batch_size}\n    privacy: {{mechanism: dp-sgd, "
          f"clip: {args.clip:g}, noise_multiplier: {sigma:.4f}, delta: {args.delta:g}}}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from ringfl.audit import AuditConfig, audit_params
    from ringfl.checkpoint import load_checkpoint
    from ringfl.config import load_config
    from ringfl.progress import bar

    config = load_config(args.config)
    arrays, _ = load_checkpoint(Path(args.checkpoint))
    if "params" not in arrays:
        raise ConfigError(f"{args.checkpoint} holds no 'params' array (a coordinator checkpoint does)")
    audit = AuditConfig.from_run(config, index=args.index, shadows=args.shadows, members=args.members)
    console = Console(stderr=True)
    progress, task = bar(console, "shadow models", args.shadows)
    with progress:
        report = audit_params(np.asarray(arrays["params"], np.float32), audit,
                              progress=lambda done, total: progress.update(task, completed=done))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def add_privacy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy", help="differential privacy tools")
    psub = p.add_subparsers(dest="privacy_command", required=True)
    q = psub.add_parser("plan", help="the DP-SGD noise multiplier for a target epsilon (or epsilon of a sigma)")
    q.add_argument("--epsilon", type=float, help="target epsilon per peer over the whole run")
    q.add_argument("--noise", type=float, help="a noise multiplier sigma: print its epsilon instead")
    q.add_argument("--delta", type=float, default=1e-5)
    q.add_argument("--rounds", type=int, required=True)
    q.add_argument("--samples", type=int, default=6000, help="records per peer (N)")
    q.add_argument("--batch-size", type=int, default=256, help="expected Poisson batch B (q = B/N)")
    q.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    q.add_argument("--clip", type=float, default=1.0)
    q.set_defaults(handler=_cmd_plan)


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="membership-inference audit (loss threshold + offline LiRA) of a run")
    p.add_argument("--config", required=True, help="the run's config (data, model, partition, training)")
    p.add_argument("--checkpoint", required=True, help="the coordinator's checkpoint.npz (final model)")
    p.add_argument("--index", type=int, default=0, help="audit this peer's records")
    p.add_argument("--shadows", type=int, default=16, help="LiRA shadow models")
    p.add_argument("--members", type=int, default=1000, help="audited members (and as many non-members)")
    p.add_argument("--out", help="also write the JSON report here")
    p.set_defaults(handler=_cmd_audit)
