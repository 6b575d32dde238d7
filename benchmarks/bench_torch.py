"""normfast.torch against torch's own modules: the targets table of issue 17.

Run:  python benchmarks/bench_torch.py [--quick] [--threads N]

Every case runs torch's model and the same model after ``normfast.torch.patch`` (a deep copy:
same weights) in the same process, alternating the two round by round; the table gives the
median time per call of each and the ratio normfast / torch.  Cases:

* ``nft.LayerNorm`` forward on (1, 768) / (16, 768) float32 under no_grad, and forward +
  backward on (16, 768);
* a GPT-2-sized decoder (4 pre-norm blocks, 768 wide, 12 heads, random init) forward in eval
  mode, batch x tokens 1x1, 1x4, 1x16, 8x512;
* resnet18 (written here from torch modules; no torchvision needed) in channels_last,
  16 x 3 x 224 x 224: one SGD training step, and the eval forward;
* ``torch.compile(patched decoder, fullgraph=True)``: compiles (no graph break possible with
  fullgraph) and its output against eager;
* bfloat16 decoder forward: max abs error against the float32 torch model, normfast vs torch.

Not collected by pytest (no test functions); ``benchmarks/conftest.py`` collects bench_*.py.
"""
import argparse
import copy
import statistics
import sys
import time

from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # this checkout's normfast
import normfast.torch as nft  # noqa: E402


# ---------------------------------------------------------------------- models
class Block(nn.Module):
    """GPT-2's block: pre-norm causal self-attention and MLP, residual adds."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(nn.functional.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Decoder(nn.Module):
    def __init__(self, layers=4, d=768, heads=12, vocab=50257, ctx=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x)          # hidden states (the vocabulary projection is not a norm's business)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18(classes=1000):
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


# ------------------------------------------------------------------- timing
def ab(fa, fb, number, rounds):
    """Median seconds per call of fa and fb, alternating rounds (same process, same load)."""
    ta, tb = [], []
    for _ in range(rounds):
        for f, acc in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            acc.append((time.perf_counter() - t0) / number)
    return statistics.median(ta), statistics.median(tb)


def fmt(t):
    return f"{t * 1e6:9.1f} us" if t < 1e-3 else f"{t * 1e3:9.2f} ms"


ROWS = []


def report(case, t_torch, t_ours):
    ROWS.append((case, t_torch, t_ours))
    print(f"| {case:44s} | {fmt(t_torch)} | {fmt(t_ours)} | {t_ours / t_torch:5.2f}x |", flush=True)


def bench_layer_norm(scale):
    for shape in ((1, 768), (16, 768)):
        ref = nn.LayerNorm(768)
        ours = nft.LayerNorm(768)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(*shape)
        with torch.no_grad():
            report(f"LayerNorm fwd {shape} f32 no_grad", *ab(lambda: ref(x), lambda: ours(x), 2000 // scale, 15))
    xg = torch.randn(16, 768, requires_grad=True)
    g = torch.randn(16, 768)
    report("LayerNorm fwd+bwd (16, 768)", *ab(lambda: ref(xg).backward(g), lambda: ours(xg).backward(g),
                                               500 // scale, 15))


def bench_decoder(scale):
    torch.manual_seed(0)
    ref = Decoder().eval()
    ours = nft.patch(copy.deepcopy(ref))
    for b, t, rounds in ((1, 1, 9), (1, 4, 9), (1, 16, 9), (8, 512, 3)):
        idx = torch.randint(0, 50257, (b, t))
        number = max(1, (10 if t < 512 else 1) // scale)
        with torch.no_grad():
            report(f"GPT-2-sized decoder fwd {b}x{t}", *ab(lambda: ref(idx), lambda: ours(idx), number,
                                                           max(3, rounds // scale)))


def bench_resnet(scale):
    torch.manual_seed(0)
    ref = resnet18().to(memory_format=torch.channels_last)
    ours = nft.patch(copy.deepcopy(ref))
    n = 16 // scale
    x = torch.randn(n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (n,))

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), target).backward()
            opt.step()
        return run
    ref.train()
    ours.train()
    report(f"resnet18 channels_last train step {n}x224^2",
           *ab(step(ref, torch.optim.SGD(ref.parameters(), lr=1e-3)),
               step(ours, torch.optim.SGD(ours.parameters(), lr=1e-3)), 1, 3))
    ref.eval()
    ours.eval()
    with torch.no_grad():
        report(f"resnet18 channels_last eval fwd {n}x224^2", *ab(lambda: ref(x), lambda: ours(x), 1, 5))


def check_compile_and_bf16():
    torch.manual_seed(0)
    ref = Decoder().eval()
    ours = nft.patch(copy.deepcopy(ref))
    idx = torch.randint(0, 50257, (1, 16))
    t0 = time.perf_counter()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        yc = compiled(idx)
        t_compile = time.perf_counter() - t0
        ye = ours(idx)
    print(f"compile(patched decoder, fullgraph=True): {t_compile:.1f} s, max |compiled - eager| = "
          f"{(yc - ye).abs().max().item():.2e}")
    with torch.no_grad():
        y32 = ref(idx)
        e_torch = (copy.deepcopy(ref).bfloat16()(idx).float() - y32).abs().max().item()
        e_ours = (copy.deepcopy(ours).bfloat16()(idx).float() - y32).abs().max().item()
    print(f"bfloat16 decoder fwd 1x16: max abs error vs float32 torch: torch bf16 {e_torch:.4f}, "
          f"normfast bf16 {e_ours:.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller resnet batch (a smoke run)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (normfast follows it)")
    p.add_argument("--only", default="ln,decoder,resnet,compile", help="comma-separated subset")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    scale = 8 if a.quick else 1
    only = set(a.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians, alternating rounds")
    print("| case | torch | normfast | ratio |\n|---|---|---|---|")
    if "ln" in only:
        bench_layer_norm(scale)
    if "decoder" in only:
        bench_decoder(scale)
    if "resnet" in only:
        bench_resnet(scale)
    if "compile" in only:
        check_compile_and_bf16()


if __name__ == "__main__":
    sys.exit(main())
