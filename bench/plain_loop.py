"""The reference: the same training algorithms written as a plain PyTorch loop, with no codash code.

This module imports only torch (and the benchmarks' timer). It is what someone would write by hand
from the papers (Wong et al.'s fast_adversarial, Andriushchenko & Flammarion's GradAlign code), on
tensors already on the device:

- batches are index lookups into a per-epoch permutation; cifar-shaped data gets a random crop from
  4-pixel zero padding and a horizontal flip, as one gather on the device;
- methods: standard, fgsm, fgsm_rs, pgd (random start, `pgd_steps` signed steps), and any of them with
  GradAlign (`grad_align_lambda` > 0: the gradient at x is the FGSM one, the random-point gradient is built
  with create_graph=True and the cosine is differentiated through: double backprop);
- training loss and accuracy are summed on the device (nothing is read back per iteration);
- bf16 autocast when `amp` and the device is CUDA; channels_last, torch.compile and, on CUDA, the whole
  step captured as one CUDA graph (`capture`) as options.

`time_training` times `iters` training steps of a fresh model (device synchronised at both ends) and
returns images/s and ms/iteration. The model definitions are copies of codash's so that the two build the
same network; bench/__main__.py checks the parameter counts match.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from bench.timer import now

# --- models (copies of the paper's architectures) ---


class CNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, n_classes: int, n_layers: int, n_filters: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [nn.Conv2d(in_channels if i == 0 else n_filters, n_filters, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(n_filters * image_size**2, n_classes)

    def forward(self, x):
        return self.linear(self.features(x).flatten(1))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, n_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.flatten(1))


def build(name: str, in_channels: int, image_size: int, n_classes: int, n_filters: int = 16) -> nn.Module:
    if name == "cnn":
        return CNN(in_channels, image_size, n_classes, 1, n_filters)
    if name == "preact_resnet18":
        return PreActResNet18(in_channels, n_classes)
    raise ValueError(name)


# --- attacks ---


def clip(delta, x, eps):
    return torch.clamp(torch.clamp(delta, -eps, eps), -x, 1 - x)


def noise(x, eps, gen):
    return clip((torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps, x, eps)


def grad_at(model, x, y, delta=None, create_graph=False):
    point = (x if delta is None else x + delta).detach().requires_grad_(True)
    loss = F.cross_entropy(model(point), y)
    return torch.autograd.grad(loss, point, create_graph=create_graph)[0]


def adversary(method, model, x, y, eps, alpha, pgd_steps, pgd_alpha, gen):
    """(delta, the attack's gradient GradAlign reuses, or None) for one batch."""
    if method == "standard":
        return torch.zeros_like(x), None
    if method == "fgsm":
        grad = grad_at(model, x, y)
        return clip(alpha * grad.sign(), x, eps), grad
    if method == "fgsm_rs":
        start = noise(x, eps, gen)
        grad = grad_at(model, x, y, start)  # GradAlign's first gradient, as in the authors' code
        return clip(start + alpha * grad.sign(), x, eps), grad
    if method == "pgd":
        delta = noise(x, eps, gen)
        for _ in range(pgd_steps):
            delta = clip(delta + pgd_alpha * grad_at(model, x, y, delta).sign(), x, eps)
        return delta.detach(), None
    raise ValueError(method)


def grad_align(model, x, y, eps, grad_x, gen, fraction=1.0):
    """1 - mean cosine between the gradient at x and at a random point of the ball (double backprop),
    on the first `fraction` of the batch."""
    n = max(1, round(len(x) * fraction))
    x, y = x[:n], y[:n]
    grad_x = grad_at(model, x, y, create_graph=True) if grad_x is None else grad_x[:n].detach()
    # the paper's random point: x + eta, eta ~ U[-eps, eps], not clipped to the [0, 1] box
    eta = (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    grad_random = grad_at(model, x, y, eta, create_graph=True)
    return 1 - F.cosine_similarity(grad_x.flatten(1), grad_random.flatten(1), dim=1).mean()


# --- data ---


def crop_flip(x, gen, pad=4):
    """Random crop from zero padding and a random horizontal flip, per sample, as one gather."""
    n, c, h, w = x.shape
    dy = torch.randint(2 * pad + 1, (n, 1), device=x.device, generator=gen)
    dx = torch.randint(2 * pad + 1, (n, 1), device=x.device, generator=gen)
    flip = torch.rand(n, 1, device=x.device, generator=gen) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = dx + torch.where(flip, w - 1 - cols, cols)
    rows = dy + torch.arange(h, device=x.device)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).flatten(1)
    padded = F.pad(x, (pad,) * 4).flatten(2)
    return padded.gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


# --- training ---


def time_training(
    model_name: str,
    method: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    iters: int,
    batch_size: int,
    eps: float,
    alpha: float = 1.0,
    pgd_steps: int = 10,
    pgd_alpha: float = 0.25,
    grad_align_lambda: float = 0.0,
    grad_align_fraction: float = 1.0,
    optimizer: str = "adam",
    lr: float = 3e-3,
    cyclic: bool = False,
    augment: bool = False,
    n_filters: int = 16,
    n_classes: int = 10,
    amp: bool = False,
    channels_last: bool = False,
    compile_model: bool = False,
    capture: bool = False,
    seed: int = 0,
) -> dict:
    """Train a fresh model for `iters` steps; images/s and ms/iteration of those steps.

    `capture` (CUDA): the step is warmed up on a side stream, recorded once as a CUDA graph and replayed;
    the batch goes into static buffers and the lr into a device tensor the optimizer reads (Adam
    capturable, SGD fused). The capture is not timed.
    """
    device = train_x.device
    torch.manual_seed(seed)
    model = build(model_name, train_x.shape[1], train_x.shape[-1], n_classes, n_filters).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr_now = torch.tensor(lr, device=device) if capture else lr
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=lr_now,
            momentum=0.9,
            weight_decay=5e-4,
            **({"fused": True} if capture else {}),
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr_now, **({"capturable": True} if capture else {}))
    net = torch.compile(model) if compile_model else model
    gen = torch.Generator(device).manual_seed(seed)
    use_amp = amp and device.type == "cuda"
    steps_per_epoch = max(1, len(train_x) // batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)

    def train_step(x, y, cache_enabled=True):
        with (
            torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)
            if use_amp
            else nullcontext()
        ):
            delta, grad_x = adversary(method, net, x, y, eps, alpha * eps, pgd_steps, pgd_alpha * eps, gen)
            logits = net(x + delta)
            loss = F.cross_entropy(logits, y)
            objective = loss
            if grad_align_lambda > 0:
                reg = grad_align(net, x, y, eps, grad_x, gen, grad_align_fraction)
                objective = loss + grad_align_lambda * reg
        opt.zero_grad(set_to_none=True)
        objective.backward()  # into every leaf, GradAlign's random point too, as the paper's code does
        opt.step()
        return loss.detach().float(), (logits.argmax(1) == y).sum()

    model.train()
    if capture:
        static_x = train_x[:batch_size].clone(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        static_y = train_y[:batch_size].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                train_step(static_x, static_y, cache_enabled=False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(gen)
        with torch.cuda.graph(graph):
            static_loss, static_correct = train_step(static_x, static_y, cache_enabled=False)
    started = now(device)
    for it in range(iters):
        step = it % steps_per_epoch
        if step == 0:
            order = torch.randperm(len(train_x), device=device, generator=gen)
        idx = order[step * batch_size : (step + 1) * batch_size]
        x, y = train_x[idx], train_y[idx]
        if augment:
            x = crop_flip(x, gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        progress = (it + 1) / iters
        # the authors' triangle, peaking at 2/5 of the run
        step_lr = lr * (progress / 0.4 if progress <= 0.4 else (1 - progress) / 0.6) if cyclic else lr
        if capture:
            static_x.copy_(x)
            static_y.copy_(y)
            lr_now.fill_(step_lr)
            graph.replay()
            loss, hits = static_loss, static_correct
        else:
            for group in opt.param_groups:
                group["lr"] = step_lr
            loss, hits = train_step(x, y)
        loss_sum += loss
        correct += hits
    seconds = now(device) - started
    images = iters * batch_size
    return {
        "images_per_s": images / seconds,
        "ms_per_iter": 1000 * seconds / iters,
        "seconds": seconds,
        "train_loss": float(loss_sum) / iters,
        "train_acc": float(correct) / images,
    }
