"""Does reading online co-visitation at the snapshot's scale help prediction after training?

MovieLens-100K is cut at a time quantile. The snapshot is built (``coldstream train``'s rule)
from the events before the cut; the events after it are replayed in time order through the
worker's online rule (``CovisitCounter`` fed the last ``covisit_window`` distinct recent items,
weight > 0 only), and before each one the user's next item is predicted by co-visitation
(``CovisitIndex.top`` over the snapshot plus the online counts so far, seen items excluded).
HR@20 is reported over every such event and over those on items first seen after the cut, for
each ``online_pair_scale`` asked for ("measured" = the ratio ``coldstream train`` would store).

    .venv/bin/python scripts/covisit_scale_replay.py --cut 0.8 --scales 1,measured,8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.settings import Settings
from ranking.covisit import CovisitCounter, CovisitIndex, ItemIds, RowCache
from ranking.datasets import load_movielens_100k
from ranking.profile import event_weight, update_recent
from ranking.training import (
    TrainConfig,
    build_covisit,
    online_pair_scale,
    user_sequences,
)
from streams.worker import engine_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", type=float, default=0.8, help="time quantile of the cut")
    parser.add_argument("--scales", default="1,measured", help="comma-separated, or 'measured'")
    parser.add_argument("--n", type=int, default=20, help="list length (HR@n)")
    args = parser.parse_args()

    engine = engine_config(Settings())
    profile_cfg, window = engine.profile, engine.covisit_window
    log = load_movielens_100k().interactions
    cut = float(log["ts"].quantile(args.cut))
    before, after = log[log["ts"] < cut], log[log["ts"] >= cut]
    seqs = user_sequences(before)
    snapshot = build_covisit(seqs, sorted(seqs), TrainConfig())
    measured = online_pair_scale(seqs, sorted(seqs), TrainConfig(), engine, snapshot)
    new_items = set(after["item_id"].astype(str)) - set(before["item_id"].astype(str))
    print(
        f"cut at quantile {args.cut}: {len(before)} events before, {len(after)} after, "
        f"{len(new_items)} items first seen after; measured scale {measured:.2f}"
    )

    def weight(kind: object, rating: float) -> float:
        return event_weight(profile_cfg, str(kind), None if math.isnan(rating) else rating)

    for text in args.scales.split(","):
        scale = measured if text.strip() == "measured" else float(text)
        base = snapshot.with_online_pair_scale(scale)
        ids = ItemIds()
        counter = CovisitCounter(engine.covisit_max_pairs, engine.covisit_row_cap, ids)
        rows = RowCache()
        recent: dict[str, list[str]] = {}
        seen: dict[str, set[str]] = {}
        for user, g in before.groupby("user_id", sort=True):
            mine = recent.setdefault(str(user), [])
            events = zip(g["item_id"].astype(str), g["type"], g["rating"], strict=True)
            for item, kind, rating in events:
                update_recent(mine, item, weight(kind, float(rating)), profile_cfg)
                seen.setdefault(str(user), set()).add(item)
        hits = total = new_hits = new_total = 0
        later = zip(
            after["user_id"].astype(str),
            after["item_id"].astype(str),
            after["type"],
            after["rating"],
            strict=True,
        )
        for user, item, kind, rating in later:
            w = weight(kind, float(rating))
            mine, done = recent.setdefault(user, []), seen.setdefault(user, set())
            last = mine[-window:]
            if w > 0 and last and item not in done:
                index = CovisitIndex(base, [counter], engine.covisit_recency, ids, rows)
                hit = item in index.top(last, args.n, exclude=done)
                hits, total = hits + hit, total + 1
                if item in new_items:
                    new_hits, new_total = new_hits + hit, new_total + 1
            if w > 0:
                counter.add(last, item)
            update_recent(mine, item, w, profile_cfg)
            done.add(item)
        print(
            f"scale {scale:.2f}: HR@{args.n} {hits / max(total, 1):.4f} over {total} events; "
            f"items first seen after the cut {new_hits / max(new_total, 1):.4f} over {new_total}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
