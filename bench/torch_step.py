"""PyTorch reference for edgeseg's training-step benchmark.

Builds the same U-Net and LinkNet as `host/src/model/` (same layers, widths and
upsampling), and times full training steps (forward, cross-entropy, backward,
Adam update) on random data, like `edgeseg bench-step`.

usage: torch_step.py --model unet|linknet18 [--width 0.5] --size 256x256 --batch 4 --steps 10 --threads 2
Prints one JSON line: {"framework": "pytorch", "median_s": ..., "steps_s": [...]}.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(c_in, c_out, k, stride=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class UNet(nn.Module):
    def __init__(self, classes=11, base=16, depth=4):
        super().__init__()
        w = [base << i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            nn.Sequential(cbr(3 if i == 0 else w[i - 1], w[i], 3), cbr(w[i], w[i], 3)) for i in range(depth + 1)
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, 2) for i in reversed(range(depth)))
        self.convs = nn.ModuleList(
            nn.Sequential(cbr(2 * w[i], w[i], 3), cbr(w[i], w[i], 3)) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(w[0], classes, 1)

    def forward(self, x):
        skips = []
        for i, level in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        skips.pop()
        for up, conv in zip(self.ups, self.convs):
            x = conv(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = cbr(c_in, c_out, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        s = x if self.down is None else self.down(x)
        return F.relu(self.conv2(self.conv1(x)) + s)


def up_bn_relu(c_in, c_out, k):
    pad, out_pad = (1, 1) if k == 3 else (0, 0)
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, k, 2, pad, out_pad, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class Decoder(nn.Module):
    def __init__(self, m, n, upsample):
        super().__init__()
        q = max(m // 4, 1)
        self.reduce = cbr(m, q, 1)
        self.mid = up_bn_relu(q, q, 3) if upsample else cbr(q, q, 3)
        self.expand = cbr(q, n, 1)

    def forward(self, x):
        return self.expand(self.mid(self.reduce(x)))


class LinkNet(nn.Module):
    def __init__(self, classes=11, blocks=(2, 2, 2, 2), width=1.0):
        super().__init__()
        c = [max(round(v * width), 4) for v in (64, 128, 256, 512)]
        self.stem = cbr(3, c[0], 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[
                    Block(c[i - 1] if (i > 0 and j == 0) else c[i], c[i], 2 if (i > 0 and j == 0) else 1)
                    for j in range(blocks[i])
                ]
            )
            for i in range(4)
        )
        self.decoders = nn.ModuleList(Decoder(c[i], c[max(i - 1, 0)], i > 0) for i in range(4))
        half = max(round(32 * width), 4)
        self.final_up = up_bn_relu(c[0], half, 3)
        self.final_conv = cbr(half, half, 3)
        self.classifier = nn.ConvTranspose2d(half, classes, 2, 2)

    def forward(self, x):
        x = self.pool(self.stem(x))
        enc = []
        for stage in self.stages:
            x = stage(x)
            enc.append(x)
        d = self.decoders[3](enc[3])
        for i in (2, 1, 0):
            d = self.decoders[i](d + enc[i])
        return self.classifier(self.final_conv(self.final_up(d)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="unet")
    p.add_argument("--size", default="256x256")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=float, default=1.0, help="LinkNet channel multiplier")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    w, h = map(int, a.size.split("x"))
    model = UNet() if a.model == "unet" else LinkNet(width=a.width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(a.batch, 3, h, w)
    y = torch.randint(0, 11, (a.batch, h, w))
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "model": a.model, "size": a.size, "batch": a.batch, "threads": a.threads,
        "params": sum(p.numel() for p in model.parameters()),
        "median_s": statistics.median(times), "steps_s": times,
    }))


if __name__ == "__main__":
    main()
