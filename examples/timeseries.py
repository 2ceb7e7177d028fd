"""Next-day maximum temperature in Seattle (2012-2015 daily weather) with fastlstm: 30-day windows of the four
standardized series -> LSTM(32) -> Dense(1). Trained on 2012-2014, tested on 2015. Reports test RMSE (deg C)
against the naive last-value baseline (tomorrow = today) and the same model trained in torch.

    .venv/bin/python examples/timeseries.py [--epochs 30]
"""
import argparse
import time

import _common  # noqa: F401  (import paths)
import numpy as np

import fastlstm
from datasets import seattle_weather

FEATURES = ("temp_max", "temp_min", "precipitation", "wind")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    _common.add_threads_arg(p)
    a = p.parse_args()
    _common.set_threads(a.threads)

    w = seattle_weather()
    series = np.stack([w[k] for k in FEATURES], 1)            # (1461 days, 4)
    n_train = 365 * 3 + 1                                     # 2012 (leap) .. 2014
    mu, sd = series[:n_train].mean(0), series[:n_train].std(0)
    z = ((series - mu) / sd).astype(np.float32)
    # window ending at day t-1 predicts temp_max of day t
    t_idx = np.arange(a.window, len(z))
    x = np.stack([z[t - a.window:t] for t in t_idx])
    y = z[t_idx, 0:1]
    tr, te = t_idx < n_train, t_idx >= n_train
    x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    to_c = lambda v: v * sd[0]  # noqa: E731  (standardized -> deg C differences)
    naive = float(np.sqrt(np.mean(to_c(x_te[:, -1, 0:1] - y_te) ** 2)))
    print(f"{len(x_tr)} train / {len(x_te)} test windows of {a.window} days; naive RMSE {naive:.3f} C")

    fastlstm.set_random_seed(0)
    model = fastlstm.Sequential([fastlstm.Input((None, len(FEATURES))), fastlstm.layers.LSTM(a.units),
                                 fastlstm.layers.Dense(1)])
    model.compile("adam", "mse")
    n_val = len(x_tr) // 10                                  # last 10% of the training years for val_loss
    t = time.perf_counter()
    h = model.fit(x_tr[:-n_val], y_tr[:-n_val], epochs=a.epochs, batch_size=a.batch_size,
                  validation_data=(x_tr[-n_val:], y_tr[-n_val:]), verbose=0, seed=0)
    secs = time.perf_counter() - t
    rmse = float(np.sqrt(np.mean(to_c(model.predict(x_te) - y_te) ** 2)))
    print(f"fastlstm: test RMSE {rmse:.3f} C (naive {naive:.3f} C), {secs:.1f} s for {a.epochs} epochs")
    res = dict(config=vars(a), test_rmse_c=rmse, naive_rmse_c=naive, train_seconds=round(secs, 1),
               target="test RMSE below the naive last-value baseline", target_met=bool(rmse < naive))

    if _common.have_torch():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(len(FEATURES), a.units, batch_first=True)
                self.fc = torch.nn.Linear(a.units, 1)

            def forward(self, x):
                return self.fc(self.lstm(x)[1][0][-1])

        torch.manual_seed(0)
        net = Net()
        tsecs = _common.torch_fit(net, torch.nn.MSELoss(), x_tr[:-n_val], y_tr[:-n_val], a.epochs, a.batch_size)
        t_rmse = float(np.sqrt(np.mean(to_c(_common.torch_predict(net, x_te) - y_te) ** 2)))
        res["torch"] = dict(version=torch.__version__, test_rmse_c=t_rmse, train_seconds=round(sum(tsecs), 1))
        print(f"torch {torch.__version__}: test RMSE {t_rmse:.3f} C, {sum(tsecs):.1f} s for {a.epochs} epochs")
    _common.write_results("timeseries", res, h.history, ylabel="MSE (standardized)")


if __name__ == "__main__":
    main()
