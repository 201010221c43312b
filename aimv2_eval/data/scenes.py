"""Procedurally generated scenes: coloured shapes on varied backgrounds, with every annotation the plugins need.

Each scene is deterministic from (seed, index) and carries a caption, boxes [x1, y1, x2, y2] (pixels, x2/y2
exclusive), instance masks, referring expressions ("the small red circle left of the square"), question/answer pairs
(counting, colour, position, reading a rendered word or digit) and a class label for probing (the shape of the
largest object). `Scene.flip()` mirrors the image and swaps left/right words, so every text stays true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {"cross": "crosses"}
COLORS = {
    "red": (215, 38, 38),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 35),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
# Area of each shape as drawn by `_polygon`, in units of radius^2.
AREA_FACTORS = {"circle": np.pi, "square": 2.56, "triangle": 1.71, "diamond": 1.4, "star": 1.32, "cross": 2.2}
SIZES = {"small": (0.09, 0.12), "large": (0.17, 0.22)}  # radius as a fraction of the shorter image side
BACKGROUND_COLORS = {
    "light grey": (196, 196, 196),
    "dark grey": (72, 72, 72),
    "beige": (226, 212, 182),
    "light blue": (172, 202, 230),
    "dark green": (38, 78, 52),
    "pink": (236, 186, 200),
}
BACKGROUND_KINDS = ("plain", "gradient", "striped", "noisy")
WORDS = ("cat", "dog", "sun", "car", "tree", "fish", "bird", "book", "moon", "cake", "boat", "house", "apple", "rain")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_OPENERS = ("", "a picture of ", "an image of ", "a drawing of ", "a simple scene with ")

_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SWAP_RE = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swap left/right words (case kept), so that a caption stays true after a horizontal flip."""

    def repl(m: re.Match) -> str:
        word = m.group(0)
        new = _SWAP[word.lower()]
        return new.capitalize() if word[0].isupper() else new

    return _SWAP_RE.sub(repl, text)


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str  # "small" | "large"
    center: tuple[float, float]  # in the unmirrored layout
    radius: float

    @property
    def area(self) -> float:
        return AREA_FACTORS[self.shape] * self.radius**2

    def phrase(self, size: bool = True, color: bool = True) -> str:
        words = ([self.size] if size else []) + ([self.color] if color else []) + [self.shape]
        return " ".join(words)


@dataclass(frozen=True)
class TextItem:
    text: str
    kind: str  # "word" | "digit"
    xy: tuple[int, int]  # top-left corner in the current (possibly mirrored) image
    font_size: int
    fill: tuple[int, int, int]


@dataclass(frozen=True)
class RefExp:
    text: str
    target: int  # index into Scene.objects


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str  # "count" | "color" | "position" | "read"


@dataclass(frozen=True)
class Background:
    kind: str
    color: str
    seed: int


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape centred at (cx, cy); every shape is mirror-symmetric about its vertical axis."""
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        return pts
    if shape == "cross":
        a, w = r, 0.33 * r
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    return None  # circle


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: int | tuple[int, int, int]) -> None:
    cx, cy = obj.center
    poly = _polygon(obj.shape, cx, cy, obj.radius)
    if poly is None:
        r = obj.radius
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def _background(bg: Background, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(bg.seed)
    base = np.array(BACKGROUND_COLORS[bg.color], dtype=np.float32)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    if bg.kind == "gradient":
        ramp = np.linspace(1.0, rng.uniform(0.55, 0.8), width if rng.random() < 0.5 else height, dtype=np.float32)
        img *= ramp[None, :, None] if ramp.shape[0] == width else ramp[:, None, None]
    elif bg.kind == "striped":
        period = int(rng.integers(6, 14))
        rows = (np.arange(height) // period) % 2 == 1
        img[rows] *= 0.82
    elif bg.kind == "noisy":
        img += rng.normal(0.0, 14.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where a is relative to b, along the axis that separates them most (unmirrored layout)."""
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


@dataclass
class Scene:
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]
    text_item: TextItem | None
    caption: str
    referring: tuple[RefExp, ...]
    qa: tuple[QA, ...]
    mirrored: bool = False
    index: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------ rendering
    def _render_shapes(self) -> tuple[Image.Image, np.ndarray]:
        img = Image.fromarray(_background(self.background, self.width, self.height))
        draw = ImageDraw.Draw(img)
        masks = np.zeros((len(self.objects), self.height, self.width), dtype=bool)
        for i, obj in enumerate(self.objects):
            layer = Image.new("L", (self.width, self.height), 0)
            _draw_shape(ImageDraw.Draw(layer), obj, 255)
            masks[i] = np.asarray(layer) > 127
            _draw_shape(draw, obj, COLORS[obj.color])
        if self.mirrored:  # mirror pixels, so that masks and boxes are exact mirrors of the unflipped scene
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            masks = masks[:, :, ::-1].copy()
        return img, masks

    def _render(self) -> None:
        img, masks = self._render_shapes()
        if self.text_item is not None:  # drawn after mirroring: the text stays readable
            t = self.text_item
            ImageDraw.Draw(img).text(t.xy, t.text, fill=t.fill, font=_font(t.font_size))
        self._cache["image"], self._cache["masks"] = img, masks

    @property
    def image(self) -> Image.Image:
        if "image" not in self._cache:
            self._render()
        return self._cache["image"]

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool instance masks, in `objects` order."""
        if "masks" not in self._cache:
            self._render()
        return self._cache["masks"]

    @cached_property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 tight boxes [x1, y1, x2, y2] of the masks."""
        out = np.zeros((len(self.objects), 4), dtype=np.float32)
        for i, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out

    @property
    def labels(self) -> list[int]:
        """Shape class of each object."""
        return [SHAPES.index(o.shape) for o in self.objects]

    @property
    def label(self) -> int:
        """Probe label: the shape of the largest object (`objects` is sorted by area, largest first)."""
        return SHAPES.index(self.objects[0].shape)

    def flip(self) -> Scene:
        """Horizontal mirror: pixels, masks and boxes mirrored, left/right words swapped, text kept readable."""
        text = self.text_item
        if text is not None:
            w = _font(text.font_size).getbbox(text.text)[2]
            text = replace(text, xy=(self.width - text.xy[0] - w, text.xy[1]))
        return replace(
            self,
            text_item=text,
            caption=swap_left_right(self.caption),
            referring=tuple(replace(r, text=swap_left_right(r.text)) for r in self.referring),
            qa=tuple(replace(q, question=swap_left_right(q.question), answer=swap_left_right(q.answer)) for q in self.qa),
            mirrored=not self.mirrored,
            _cache={},
        )

    def to_dict(self) -> dict:
        """JSON-able annotations (no pixels)."""
        return {
            "index": self.index,
            "size": [self.width, self.height],
            "caption": self.caption,
            "label": self.label,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "box": [float(v) for v in b]}
                for o, b in zip(self.objects, self.boxes)
            ],
            "referring": [{"text": r.text, "target": r.target} for r in self.referring],
            "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind} for q in self.qa],
            "text": None if self.text_item is None else self.text_item.text,
        }


# ---------------------------------------------------------------- language
def _unique_phrase(objs: tuple[SceneObject, ...], i: int) -> str | None:
    """Shortest attribute phrase (shape; colour + shape; size + colour + shape) naming only object i."""
    o = objs[i]
    for size, color in ((False, False), (False, True), (True, False), (True, True)):
        p = o.phrase(size, color)
        if sum(x.phrase(size, color) == p for x in objs) == 1:
            return p
    return None


def _referring(objs: tuple[SceneObject, ...]) -> list[RefExp]:
    out = []
    for i, o in enumerate(objs):
        p = _unique_phrase(objs, i)
        if p:
            out.append(RefExp(f"the {p}", i))
        # Relational: "the small red circle left of the square"; the anchor must be the only one of its shape and
        # the relation must single out the target among objects that share its full description.
        for j, anchor in enumerate(objs):
            if j == i or sum(x.shape == anchor.shape for x in objs) != 1:
                continue
            rel = _relation(o, anchor)
            full = o.phrase()
            matches = [k for k, x in enumerate(objs) if k != j and x.phrase() == full and _relation(x, anchor) == rel]
            if matches == [i]:
                out.append(RefExp(f"the {full} {rel} the {anchor.shape}", i))
                break
    return out


def _questions(objs: tuple[SceneObject, ...], text: TextItem | None, rng: np.random.Generator) -> list[QA]:
    qa = [QA("how many objects are there?", str(len(objs)), "count")]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    qa.append(QA(f"how many {plural(shape)} are there?", str(sum(o.shape == shape for o in objs)), "count"))
    for o in objs:
        for size in (False, True):
            p = o.phrase(size=size, color=False)
            if sum(x.phrase(size=size, color=False) == p for x in objs) == 1:
                qa.append(QA(f"what color is the {p}?", o.color, "color"))
                break
    named = [(i, p) for i in range(len(objs)) if (p := _unique_phrase(objs, i))]
    for (i, pi), (j, pj) in zip(named, named[1:]):
        dx = objs[i].center[0] - objs[j].center[0]
        if abs(dx) > 0.5 * (objs[i].radius + objs[j].radius):
            qa.append(QA(f"is the {pi} to the left or to the right of the {pj}?", "left" if dx < 0 else "right",
                         "position"))
    if len(objs) > 1:
        xs = [o.center[0] for o in objs]
        lo = int(np.argmin(xs))
        if sorted(xs)[1] - xs[lo] > 0.5 * objs[lo].radius:
            qa.append(QA("which shape is the leftmost?", objs[lo].shape, "position"))
    if text is not None:
        q = "what word is written in the image?" if text.kind == "word" else "what digit is written in the image?"
        qa.append(QA(q, text.text, "read"))
    return qa


def _caption(bg: Background, objs: tuple[SceneObject, ...], text: TextItem | None, width: int, height: int,
             rng: np.random.Generator) -> str:
    phrases = [f"a {o.phrase()}" for o in objs]
    body = phrases[0]
    if len(objs) > 1:
        body = f"{phrases[0]} {_relation(objs[0], objs[1])} {phrases[1]}"
        if len(objs) > 2:
            body += ", with " + " and ".join(phrases[2:])
    opener = CAPTION_OPENERS[int(rng.integers(len(CAPTION_OPENERS)))]
    bg_words = bg.color if bg.kind == "plain" else f"{bg.kind} {bg.color}"
    caption = f"{opener}{body} on a {bg_words} background."
    if text is not None:
        w, h = _font(text.font_size).getbbox(text.text)[2:]
        cx, cy = text.xy[0] + w / 2, text.xy[1] + h / 2
        where = "top" if cy < height / 2 else "bottom"
        if abs(cx - width / 2) > 0.15 * width:
            where += " left" if cx < width / 2 else " right"
        what = f'the word "{text.text}"' if text.kind == "word" else f"the digit {text.text}"
        caption += f" {what} is written at the {where}."
    return caption


# ---------------------------------------------------------------- generation
def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float32)))


def generate_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (224, 224),
    max_objects: int = 4,
    text_prob: float = 0.3,
) -> Scene:
    """One scene, fully determined by (seed, index, size, max_objects, text_prob)."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    short = min(width, height)
    bg = Background(
        BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
        list(BACKGROUND_COLORS)[int(rng.integers(len(BACKGROUND_COLORS)))],
        int(rng.integers(2**31)),
    )
    bg_rgb = BACKGROUND_COLORS[bg.color]
    colors = [c for c, rgb in COLORS.items() if _contrast(rgb, bg_rgb) > 110]

    taken: list[tuple[float, float, float, float]] = []  # boxes already used (objects and text)
    text = None
    if rng.random() < text_prob:
        kind = "digit" if rng.random() < 0.5 else "word"
        word = str(int(rng.integers(10))) if kind == "digit" else WORDS[int(rng.integers(len(WORDS)))]
        font_size = max(10, int(short * 0.15))
        _, _, tw, th = _font(font_size).getbbox(word)
        if tw < width - 4 and th < height - 4:
            x = int(rng.integers(2, width - tw - 1))
            y = int(rng.integers(2, height - th - 1))
            lum = 0.299 * bg_rgb[0] + 0.587 * bg_rgb[1] + 0.114 * bg_rgb[2]
            fill = (10, 10, 10) if lum > 128 else (245, 245, 245)
            text = TextItem(word, kind, (x, y), font_size, fill)
            taken.append((x - 2, y - 2, x + tw + 2, y + th + 2))

    objs: list[SceneObject] = []
    n_target = int(rng.integers(1, max_objects + 1))
    for _ in range(60 * n_target):
        if len(objs) == n_target:
            break
        size_name = "small" if rng.random() < 0.5 else "large"
        lo, hi = SIZES[size_name]
        r = float(rng.uniform(lo, hi) * short)
        cx = float(rng.uniform(r + 2, width - r - 2))
        cy = float(rng.uniform(r + 2, height - r - 2))
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
            continue
        taken.append(box)
        objs.append(SceneObject(
            SHAPES[int(rng.integers(len(SHAPES)))], colors[int(rng.integers(len(colors)))], size_name, (cx, cy), r
        ))
    if not objs:  # the text left no room: drop it and place one object
        text, r = None, SIZES["small"][0] * short
        objs.append(SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], colors[0], "small", (width / 2, height / 2), r))
    # Largest first: captions then open with the dominant object, the probe label, and their order is canonical.
    objects = tuple(sorted(objs, key=lambda o: -o.area))
    return Scene(
        width=width,
        height=height,
        background=bg,
        objects=objects,
        text_item=text,
        caption=_caption(bg, objects, text, width, height, rng),
        referring=tuple(_referring(objects)),
        qa=tuple(_questions(objects, text, rng)),
        index=index,
    )


class SceneDataset:
    """`n` scenes from `seed`; scene i is the same whatever else is generated.

    `aspect_ratios` (width / height) gives scenes of varied shapes at the area of `image_size`**2, for
    native-resolution training; by default every scene is square.
    """

    label_names = SHAPES

    def __init__(
        self,
        n: int = 1000,
        seed: int = 0,
        image_size: int = 224,
        aspect_ratios: tuple[float, ...] = (1.0,),
        max_objects: int = 4,
        text_prob: float = 0.3,
    ) -> None:
        if n < 1:
            raise ValueError(f"a scene dataset needs at least one scene, got n={n}")
        self.n, self.seed, self.image_size = n, seed, image_size
        self.aspect_ratios = tuple(aspect_ratios)
        self.max_objects, self.text_prob = max_objects, text_prob

    def __len__(self) -> int:
        return self.n

    def size_of(self, index: int) -> tuple[int, int]:
        if len(self.aspect_ratios) == 1 and self.aspect_ratios[0] == 1.0:
            return (self.image_size, self.image_size)
        ratio = self.aspect_ratios[int(np.random.default_rng([self.seed, index, 1]).integers(len(self.aspect_ratios)))]
        return (max(16, round(self.image_size * ratio**0.5)), max(16, round(self.image_size / ratio**0.5)))

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.n:
            raise IndexError(f"scene {index} out of range 0..{self.n - 1}")
        return generate_scene(self.seed, index, self.size_of(index), self.max_objects, self.text_prob)


# ---------------------------------------------------------------- richer referring expressions (grounding only)
def _extreme(objs: tuple[SceneObject, ...], members: list[int], axis: int, lowest: bool) -> int | None:
    """The member furthest along an axis, when it leads the next one by half its radius (else: ambiguous)."""
    if len(members) < 2:
        return None
    order = sorted(members, key=lambda k: objs[k].center[axis], reverse=not lowest)
    a, b = objs[order[0]], objs[order[1]]
    return order[0] if abs(a.center[axis] - b.center[axis]) > 0.5 * a.radius else None


def grounding_expressions(scene: Scene) -> tuple[RefExp, ...]:
    """`scene.referring` plus harder expressions for referring-expression comprehension: relations to an anchor named
    by colour and shape ("the small red circle left of the blue square"), extremes ("the leftmost star", "the
    topmost object") and size superlatives ("the largest object"). Each names exactly one object.

    Computed on demand and never stored in the scene, so existing scenes (and every number pinned on them) are
    unchanged; like the scene's own texts they follow `flip()` (left/right swapped when mirrored).
    """
    objs = scene.objects
    out: list[RefExp] = []
    for i, o in enumerate(objs):
        full = o.phrase()
        for j, anchor in enumerate(objs):
            colour_shape = anchor.phrase(size=False)
            if j == i or sum(x.phrase(size=False) == colour_shape for x in objs) != 1:
                continue
            rel = _relation(o, anchor)
            if [k for k, x in enumerate(objs) if k != j and x.phrase() == full and _relation(x, anchor) == rel] == [i]:
                out.append(RefExp(f"the {full} {rel} the {colour_shape}", i))
    words = (("leftmost", 0, True), ("rightmost", 0, False), ("topmost", 1, True), ("bottommost", 1, False))
    groups = [("object", list(range(len(objs))))]
    groups += [(s, [k for k, x in enumerate(objs) if x.shape == s]) for s in SHAPES]
    for noun, members in groups:
        for word, axis, lowest in words:
            k = _extreme(objs, members, axis, lowest)
            if k is not None:
                out.append(RefExp(f"the {word} {noun}", k))
    if len(objs) > 1:  # `objects` is sorted by area, largest first
        if objs[0].area > 1.3 * objs[1].area:
            out.append(RefExp("the largest object", 0))
        if objs[-2].area > 1.3 * objs[-1].area:
            out.append(RefExp("the smallest object", len(objs) - 1))
    if scene.mirrored:  # relations above are in the unmirrored layout
        out = [replace(r, text=swap_left_right(r.text)) for r in out]
    texts = {r.text for r in scene.referring}
    extra = []
    for r in out:
        if r.text not in texts:
            texts.add(r.text)
            extra.append(r)
    return tuple(scene.referring) + tuple(extra)
