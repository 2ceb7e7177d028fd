"""Shared bits of the examples: import paths, results JSON, loss-curve PNG, torch training loop, timing."""
import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def machine():
    import fastlstm
    d = fastlstm.info()
    return {"cpu": d["cpu"], "cores": os.cpu_count(), "threads": d["threads"], "backend": d["backend"],
            "python": platform.python_version(), "fastlstm": d["version"]}


def write_results(name, results, history=None, ylabel="loss"):
    """examples/results/<name>.json, plus <name>_loss.png (train/val curves) when matplotlib is installed."""
    os.makedirs(RESULTS, exist_ok=True)
    results = dict(example=name, date=datetime.date.today().isoformat(), machine=machine(), **results)
    if history is not None:
        results["history"] = {k: [float(v) for v in vs] for k, vs in history.items()}
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
    if history is not None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no loss-curve PNG")
            return results
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key in ("loss", "val_loss"):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=key)
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name} (fastlstm)")
        ax.legend()
        fig.tight_layout()
        png = os.path.join(RESULTS, f"{name}_loss.png")
        fig.savefig(png, dpi=90)
        print(f"wrote {png}")
    return results


def have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def torch_fit(net, loss_fn, x, y, epochs, batch_size, lr=1e-3, seed=0):
    """Adam training of a torch module on numpy arrays; returns seconds per epoch (list)."""
    import torch
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    secs = []
    for _ in range(epochs):
        net.train()
        t = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(x)))
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        secs.append(time.perf_counter() - t)
    net.eval()
    return secs


def torch_predict(net, x, batch_size=512):
    import torch
    with torch.inference_mode():
        return np.concatenate([net(torch.from_numpy(x[s:s + batch_size])).numpy()
                               for s in range(0, len(x), batch_size)])


def fit_timed(model, x, y, epochs, batch_size, validation_data=None, seed=0):
    """model.fit one epoch at a time; returns (history dict, seconds per epoch)."""
    hist, secs = {}, []
    for e in range(epochs):
        t = time.perf_counter()
        h = model.fit(x, y, epochs=1, batch_size=batch_size, validation_data=validation_data, verbose=0,
                      seed=seed + e)
        secs.append(time.perf_counter() - t)
        for k, v in h.history.items():
            hist.setdefault(k, []).extend(v)
        print(f"epoch {e + 1}/{epochs}: " + " ".join(f"{k} {v[-1]:.4f}" for k, v in hist.items())
              + f" ({secs[-1]:.0f} s)", flush=True)
    return hist, secs


def set_threads(n):
    """Same thread count for fastlstm and torch. Default 1 in the examples: on a busy 2-core machine, 2 spinning
    threads made fastlstm's small-batch training steps ~10x slower (see examples/README.md)."""
    import fastlstm
    fastlstm.set_num_threads(n)
    if have_torch():
        import torch
        torch.set_num_threads(n)


def add_threads_arg(p):
    p.add_argument("--threads", type=int, default=1, help="threads for fastlstm and torch (default 1)")
