"""The interactive explorer over a run: pick or upload an image, see the top-k classes, any CAM methods side by
side with their faithfulness numbers on that image, and download the overlays (Gradio; ``pip install
sportsnet[app]``).

    python -m sportsnet.apps.explore --checkpoint runs/<run>                 # a train_vgg19.py or train.py run
    python -m sportsnet.apps.explore --checkpoint runs/clip-demo-<recipe>    # a pretrain_clip.py run: CLIP
    python -m sportsnet.apps.explore --clip ViT-B-32 --pretrained openai --images my_photos/

In a notebook (it renders inline):

    from sportsnet.apps.explore import Explorer, build_app
    build_app(Explorer.from_run("runs/<run>")).launch()

A classifier run answers with its own classes; CLIP with class names the user can edit, or free-text prompts that
replace them. The images to pick from are --images, else the test split of the run's own data where it is on disk;
the page opens with the first one explained. Precision is the hardware-aware choice of every program
(:func:`sportsnet.hardware.resolve_precision`, logged with its reason); the explanations and the faithfulness
forwards run under it. The same answers without a browser: :meth:`Explorer.explain`.
"""
from __future__ import annotations

import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..cam import EXPLAINERS, make_explainer, method_name
from ..cam.metrics import score_explanations
from ..cam.overlay import overlay
from ..data import SPORTS100_CLASSES, UnreadableImageError, denormalize, load_rgb
from ..data.images import is_image_file
from ..engine import load_checkpoint
from ..hardware import autocast, describe, hardware_line, resolve_precision
from ..models.prompts import prompt_names, prompt_sets
from ..models.zero_shot import ZeroShotClassifier
from ..plotting import save_figure
from .clip_data import load_clip_or_exit, resolve_data
from .config import checkpoint_path, device_from_flag, option, parse_config, precision_option, setup_logging
from .explain import ExplainConfig, method_options, run_subject

log = logging.getLogger("explore")

#: The methods ticked when the page opens: a gradient method, its second-order variant and a gradient-free one.
DEFAULT_METHODS = ("gradcam", "gradcam++", "scorecam")
#: The faithfulness numbers of one image, as :func:`sportsnet.cam.metrics.score_explanations` names them, and
#: their column headings (lower is better for deletion and Average Drop, higher for the other two).
SCORES = {"deletion_auc": "deletion AUC (lower is better)", "insertion_auc": "insertion AUC (higher is better)",
          "average_drop": "Average Drop % (lower is better)",
          "increase_in_confidence": "Increase in Confidence % (one image: 0 or 100)"}
#: At most this many images to pick from (the examples under the input image).
MAX_EXAMPLES = 24
#: CLIP zero-shot heads kept for the class-name and prompt lists of recent requests.
MAX_HEADS = 16


@dataclass
class Explanation:
    """What :meth:`Explorer.explain` answers for one image."""

    top: list[tuple[str, float]]  # the top-k classes and their probabilities, most likely first
    target: str  # the class the maps explain (the most likely one)
    image: Image.Image  # the model's view of the image (resized and cropped as the model sees it)
    maps: dict[str, torch.Tensor]  # per method, the (H, W) map in [0, 1] at the model's input size
    overlays: dict[str, Image.Image]  # per method, the map blended over ``image``
    scores: dict[str, dict[str, float]]  # per method, the faithfulness numbers of :data:`SCORES`
    seconds: dict[str, float]  # per method, the time its map took
    refused: dict[str, str] = field(default_factory=dict)  # methods that cannot read this model, and why

    def side_by_side(self, path: str | Path) -> Path:
        """One PNG: the image, then every overlay titled with its method and deletion/insertion AUCs."""
        from matplotlib.figure import Figure

        panels = [("image", self.image), *((m, o) for m, o in self.overlays.items())]
        fig = Figure(figsize=(2.2 * len(panels), 2.6), dpi=100)
        for i, (title, picture) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            ax.imshow(np.asarray(picture))
            ax.axis("off")
            if title != "image":
                title += f"\ndel {self.scores[title]['deletion_auc']:.2f} ins {self.scores[title]['insertion_auc']:.2f}"
            ax.set_title(title, fontsize=8)
        fig.suptitle(f"{self.target} ({self.top[0][1]:.0%})", fontsize=9)
        fig.tight_layout()
        return save_figure(fig, path)


class Explorer:
    """A classifier and how its inputs are made, answering :meth:`explain` for one image at a time.

    Build it with :meth:`from_run` (a training run of train_vgg19.py / train.py, or a pretrain_clip.py run) or
    :meth:`from_clip` (an open_clip architecture and weights). ``class_names``: what the UI shows and, for CLIP,
    what its zero-shot classifier is built from (editable per request)."""

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], transform, mean, std, *, name: str,
                 device: torch.device, precision: str, clip_bundle=None, templates: Sequence[str] = ("{}",),
                 examples: Sequence[str] = ()):
        self.model, self.class_names, self.transform = model, list(class_names), transform
        self.mean, self.std, self.name = tuple(mean), tuple(std), name
        self.device, self.precision = device, precision
        self.clip_bundle, self.templates = clip_bundle, tuple(templates)
        self.examples = [str(p) for p in examples]
        self._classifiers: dict[tuple[str, ...], ZeroShotClassifier] = {}

    @property
    def is_clip(self) -> bool:
        return self.clip_bundle is not None

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, path: str | Path, *, device: str = "auto", precision: str = "auto",
                 images: str | Path | None = None) -> "Explorer":
        """A run folder (or its checkpoint): a classifier run, or a pretrain_clip.py run (a CLIP checkpoint
        records its ``arch``), whose class names are its data's. ``images``: a folder to pick from (default: the
        test split of the run's data where it is on disk)."""
        dev = device_from_flag(device)
        ckpt = checkpoint_path(path, "best.pt")
        if not ckpt.is_file():
            raise SystemExit(f"error: --checkpoint {path}: no such run folder or checkpoint file ({ckpt} does not "
                             f"exist)")
        saved = load_checkpoint(ckpt, map_location="cpu")
        if "arch" in saved:  # pretrain_clip.py's checkpoints name their open_clip architecture
            root = _data_root(saved.get("config", {}).get("data", "synthetic"))
            classes = _class_folders(root / "test") if root is not None else []
            explorer = cls.from_clip(saved["arch"], str(ckpt), prompt_names(classes) if classes else None,
                                     device=device, precision=precision, images=images)
            if images is None and root is not None:
                explorer.examples = _examples(root / "test", False)
            return explorer
        del saved
        subject, train_cfg = run_subject(ExplainConfig(checkpoint=str(path)), dev)
        root = Path(train_cfg.synthetic_root if train_cfg.data == "synthetic" else train_cfg.data or "data/sports100")
        folder = Path(images) if images is not None else root / "test"
        return cls(subject.model, subject.classes, subject.transform, subject.mean, subject.std,
                   name=f"{subject.name} ({train_cfg.describe(subject.model)})", device=dev,
                   precision=resolve_precision(precision, dev), examples=_examples(folder, images is not None))

    @classmethod
    def from_clip(cls, arch: str, pretrained: str = "openai", class_names: Sequence[str] | None = None, *,
                  device: str = "auto", precision: str = "auto", prompts: str = "sports",
                  images: str | Path | None = None) -> "Explorer":
        """CLIP zero-shot: ``arch`` with ``pretrained`` (a tag, a local checkpoint, or ``none``) over ``class_names``
        (default: the 100 sports, cleaned for prompts) with the ``prompts`` template set."""
        dev = device_from_flag(device)
        bundle = load_clip_or_exit(arch, pretrained, dev)
        names = list(class_names) if class_names else prompt_names(SPORTS100_CLASSES, "sports100")
        if prompts not in prompt_sets():
            raise SystemExit(f"error: --prompts {prompts!r} is not one of {', '.join(prompt_sets())}")
        model = ZeroShotClassifier.from_names(bundle, names, prompt_sets()[prompts]).to(dev).eval()
        explorer = cls(model, names, bundle.transforms(False), bundle.mean, bundle.std,
                       name=f"{bundle.name} ({Path(bundle.pretrained).name})", device=dev,
                       precision=resolve_precision(precision, dev), clip_bundle=bundle,
                       templates=prompt_sets()[prompts],
                       examples=_examples(Path(images), True) if images is not None else [])
        explorer._classifiers[("classes", *names)] = model
        return explorer

    # --- answering ------------------------------------------------------------------------------------------
    def classifier(self, class_names: Sequence[str] | None = None,
                   prompts: Sequence[str] | None = None) -> tuple[torch.nn.Module, list[str]]:
        """The model and its labels for a request: a classifier run's own; for CLIP, a zero-shot head over
        ``prompts`` (each text as it is) when given, else over ``class_names`` (else the explorer's) through
        the template set. Heads are built once per distinct list."""
        if not self.is_clip:
            if class_names or prompts:
                raise ValueError("class names and prompts apply to CLIP only: a classifier run has its own classes")
            return self.model, self.class_names
        texts = [t.strip() for t in (prompts or []) if t.strip()]
        names = texts or [n.strip() for n in (class_names or self.class_names) if n.strip()]
        if len(names) < 2:
            raise ValueError(f"CLIP needs at least two class names or prompts to choose between, got {names}")
        key = ("prompts" if texts else "classes", *names)
        if key not in self._classifiers:
            if len(self._classifiers) >= MAX_HEADS:  # a long-lived page: forget the oldest list typed
                self._classifiers.pop(next(iter(self._classifiers)))
            templates = ["{}"] if texts else self.templates
            self._classifiers[key] = ZeroShotClassifier.from_names(self.clip_bundle, names, templates).to(
                self.device).eval()
        return self._classifiers[key], names

    def explain(self, image: str | Path | Image.Image, methods: Sequence[str] = DEFAULT_METHODS, top_k: int = 5, *,
                class_names: Sequence[str] | None = None, prompts: Sequence[str] | None = None,
                deletion_steps: int = 16) -> Explanation:
        """Top-k classes of ``image`` (a file, decoded as the datasets decode it, or a PIL image) and each method's
        map of the most likely class, with its faithfulness numbers on this image. A method that cannot read the
        model (a transformer-native one on a CNN) is reported in ``refused``; an unknown name is an error."""
        methods = [method_name(m) for m in methods]
        if not methods:
            raise ValueError(f"no CAM method chosen; expected some of {', '.join(EXPLAINERS)}")
        model, labels = self.classifier(class_names, prompts)
        if not 1 <= top_k:
            raise ValueError(f"top_k={top_k} must be >= 1")
        rgb = load_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        x = self.transform(rgb)[None].to(self.device)
        with torch.no_grad(), autocast(self.device, self.precision):
            probs = model(x).float().softmax(dim=1)[0]
        p, idx = probs.topk(min(top_k, len(labels)))
        top = [(labels[i], float(q)) for q, i in zip(p.tolist(), idx.tolist())]
        target = idx[:1]
        maps, seconds, refused = {}, {}, {}
        with autocast(self.device, self.precision):
            for m in methods:
                start = time.perf_counter()
                try:
                    with make_explainer(model, m, **method_options(m, ExplainConfig(precision=self.precision))) as cam:
                        maps[m] = cam(x, targets=target).maps[:, 0].float()
                except ValueError as e:
                    refused[m] = str(e)
                    continue
                seconds[m] = time.perf_counter() - start
            scores = score_explanations(model, x, maps, target, deletion_steps=deletion_steps) if maps else {}
        view = denormalize(x.float(), self.mean, self.std)
        overlays = {m: _to_pil(overlay(view, v)[0]) for m, v in maps.items()}
        return Explanation(top=top, target=labels[int(target)], image=_to_pil(view[0]),
                           maps={m: v[0].cpu() for m, v in maps.items()}, overlays=overlays,
                           scores={m: {k: float(scores[f"{k}/{m}"][0]) for k in SCORES} for m in maps},
                           seconds=seconds, refused=refused)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """A ``(3, H, W)`` tensor in [0, 1] as an 8-bit RGB image."""
    return Image.fromarray(image.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy())


def _data_root(data: str) -> Path | None:
    """The folder of a run's ``--data`` (the CLIP programs' synthetic set for 'synthetic'), or None."""
    try:
        _, root, _ = resolve_data(data)
    except SystemExit:
        return None
    return root


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _examples(folder: Path, required: bool) -> list[str]:
    """Up to :data:`MAX_EXAMPLES` image files under ``folder``, spread over its class folders (the first file of
    each class, then the second, ...). A missing folder the user named is an error; the run's own is optional."""
    if not folder.is_dir():
        if required:
            raise SystemExit(f"error: --images {folder} is not a folder")
        log.info("no images to pick from at %s (upload one, or pass --images)", folder)
        return []
    groups: dict[Path, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and is_image_file(p):
            groups.setdefault(p.parent, []).append(p)
    if required and not groups:
        raise SystemExit(f"error: no image files under --images {folder}")
    out: list[str] = []
    for rank in range(max((len(v) for v in groups.values()), default=0)):
        out += [str(v[rank]) for v in groups.values() if rank < len(v)]
        if len(out) >= MAX_EXAMPLES:
            break
    return out[:MAX_EXAMPLES]


# --- the Gradio app ---------------------------------------------------------------------------------------------
def build_app(explorer: Explorer, *, methods: Sequence[str] = DEFAULT_METHODS, top_k: int = 5,
              explain_on_load: bool = True):
    """The explorer's page (a ``gradio.Blocks``; ``.launch()`` it). Its one endpoint, ``/explain``, takes (image
    file, methods, top-k, class names one per line, prompts separated by ';') and answers (top-k label,
    overlays gallery, faithfulness table, side-by-side PNG). With ``explain_on_load`` the page opens with the
    first example explained."""
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("error: the explorer needs Gradio: pip install 'sportsnet[app]'") from None
    import pandas as pd

    methods = [method_name(m) for m in methods]
    columns = ["method", *SCORES.values(), "seconds", "note"]
    workdir = tempfile.TemporaryDirectory(prefix="sportsnet-explore-")  # the downloads; removed with the app

    def answer(image, chosen, k, names, prompts):
        if not image:
            raise gr.Error("pick or upload an image first")
        try:
            result = explorer.explain(image, chosen or [], int(k),
                                      class_names=names.splitlines() if explorer.is_clip and names else None,
                                      prompts=prompts.split(";") if explorer.is_clip and prompts else None)
        except (ValueError, UnreadableImageError) as e:  # a bad choice on the page, or a file that is no image
            raise gr.Error(str(e)) from None
        gallery = [(result.overlays[m], f"{m} -> {result.target}") for m in result.overlays]
        rows = [[m, *(round(result.scores[m][s], 4) for s in SCORES), round(result.seconds[m], 3), ""]
                for m in result.overlays]
        rows += [[m, *([None] * len(SCORES)), None, f"refused: {why}"] for m, why in result.refused.items()]
        download = Path(workdir.name) / f"overlays-{uuid.uuid4().hex[:8]}.png"  # Gradio serves a copy of it
        result.side_by_side(download)
        return dict(result.top), gallery, pd.DataFrame(rows, columns=columns), str(download)

    first = explorer.examples[0] if explorer.examples else None
    hardware = hardware_line(describe(explorer.device))
    with gr.Blocks(title=f"sportsnet explorer: {explorer.name}") as app:
        gr.Markdown(f"### sportsnet explorer: {explorer.name}\n{explorer.device}, {explorer.precision} "
                    f"({hardware}). Pick or upload an image; the maps explain the most likely class.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(value=first, type="filepath", label="image (upload, paste, or pick below)",
                                 elem_id="image")
                if explorer.examples:
                    gr.Examples(explorer.examples, inputs=image, label="images to pick from")
                chosen = gr.CheckboxGroup(list(EXPLAINERS), value=methods, label="CAM methods")
                k = gr.Slider(1, max(1, min(10, len(explorer.class_names))), value=min(top_k,
                              len(explorer.class_names)), step=1, label="top-k")
                names = gr.Textbox("\n".join(explorer.class_names), lines=6, visible=explorer.is_clip,
                                   label="class names, one per line (CLIP)")
                prompts = gr.Textbox("", visible=explorer.is_clip,
                                     label="free-text prompts, ';' between several (replace the class names)")
                button = gr.Button("Explain", variant="primary")
            with gr.Column(scale=2):
                label = gr.Label(label="top-k classes")
                gallery = gr.Gallery(label="overlays", columns=3, format="png", elem_id="overlays")
                table = gr.Dataframe(headers=columns, label="faithfulness on this image")
                download = gr.File(label="download: the overlays side by side (PNG)")
        inputs, outputs = [image, chosen, k, names, prompts], [label, gallery, table, download]
        button.click(answer, inputs, outputs, api_name="explain")
        if explain_on_load and first is not None:
            app.load(answer, inputs, outputs, api_name=False)
    app.sportsnet_workdir = workdir  # lives as long as the app
    return app


@dataclass
class ExploreConfig:
    checkpoint: str = option("", "a train_vgg19.py / train.py run folder (or checkpoint), or a pretrain_clip.py run "
                                 "(CLIP zero-shot with its data's class names)")
    clip: str = option("", "or an open_clip architecture, zero-shot (e.g. ViT-B-32)")
    pretrained: str = option("openai", "--clip weights: a tag, a local checkpoint file, or 'none'")
    classes: str = option("", "--clip: class names, ';' between them (default: the 100 sports); editable on the page")
    prompts: str = option("sports", "--clip: template set of the class names", ("single", "sports", "imagenet"))
    images: str = option("", "a folder of images to pick from (default: the test split of the run's data)")
    methods: str = option(",".join(DEFAULT_METHODS), "CAM methods ticked when the page opens, comma-separated")
    top_k: int = option(5, "classes shown", bounds=">=1")
    host: str = option("127.0.0.1", "address to serve on (0.0.0.0: reachable from other machines)")
    port: int = option(0, "port (0: Gradio's choice, 7860 or the next free one)", bounds=">=0")
    share: bool = option(False, "also a temporary public gradio.live link")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    precision: str = precision_option()


def main(argv=None):
    setup_logging()
    cfg, _ = parse_config(ExploreConfig, argv, ExploreConfig(), __doc__)
    if bool(cfg.checkpoint) == bool(cfg.clip):
        raise SystemExit("error: give --checkpoint (a run folder) or --clip (an open_clip architecture)")
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    try:
        methods = [method_name(m) for m in methods]
    except ValueError as e:
        raise SystemExit(f"error: --methods: {e}") from None
    images = cfg.images or None
    if cfg.checkpoint:
        explorer = Explorer.from_run(cfg.checkpoint, device=cfg.device, precision=cfg.precision, images=images)
    else:
        classes = [c.strip() for c in cfg.classes.split(";") if c.strip()] or None
        explorer = Explorer.from_clip(cfg.clip, cfg.pretrained, classes, device=cfg.device, precision=cfg.precision,
                                      prompts=cfg.prompts, images=images)
    app = build_app(explorer, methods=methods, top_k=cfg.top_k)
    app.launch(server_name=cfg.host, server_port=cfg.port or None, share=cfg.share, show_error=True)
    return app


__all__ = ["DEFAULT_METHODS", "ExploreConfig", "Explanation", "Explorer", "build_app", "main"]

if __name__ == "__main__":
    main()
