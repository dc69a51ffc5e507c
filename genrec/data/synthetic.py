"""A generator of Amazon-style data with known structure, for tests, CI and demos.

:class:`SyntheticSource` is a :class:`~genrec.data.formats.base.DataSource` that reads no files:
it plants a catalogue and user sequences whose structure is known, so tests can check that a
model or tokenizer finds it.

Catalogue: every item belongs to one of ``num_categories`` categories (roughly equal sizes,
assigned at random, so the item id says nothing) and to one brand of that category. Its title is
``"{brand} {adjective} {category noun} {model}"``, its categories the path
``("Beauty", <category name>)``, its description a sentence from the same vocabulary. The
category nouns are specific to a category, so items of one category share title words.

Users: each has ``interests_per_user`` latent categories. A sequence starts at an item of an
interest drawn by within-category Zipf popularity; every next item is, with probability
``p_sequential``, the *successor* of the current item (a fixed random cycle through each
category: a first-order pattern a model can learn), otherwise a fresh Zipf draw from a random
interest. No item repeats inside a sequence: a repeated draw is redrawn a few times, then (and a
repeated successor at once) replaced by walking the category's cycle on to the first unused item.
Timestamps are increasing integer seconds.

Everything is drawn from ``np.random.default_rng`` streams of ``seed``; the catalogue uses its
own stream, so it depends only on the catalogue arguments, not on the user arguments. The ground
truth is in :attr:`SyntheticSource.truth` (a :class:`SyntheticTruth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from genrec.data.catalog import Item, ItemCatalog
from genrec.data.formats.base import DataSource, RawData

ROOT_CATEGORY = "Beauty"

# (category name, nouns only items of this category use in their titles)
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Skin Care", ("Moisturizer", "Serum", "Cleanser")),
    ("Hair Care", ("Shampoo", "Conditioner", "Scalp Tonic")),
    ("Makeup", ("Foundation", "Concealer", "Primer")),
    ("Fragrance", ("Eau de Parfum", "Cologne", "Body Mist")),
    ("Nail Care", ("Nail Polish", "Cuticle Oil", "Top Coat")),
    ("Bath & Body", ("Body Wash", "Bath Bomb", "Body Scrub")),
    ("Oral Care", ("Toothpaste", "Mouthwash", "Whitening Strips")),
    ("Sun Care", ("Sunscreen", "After-Sun Gel", "Tanning Lotion")),
    ("Men's Grooming", ("Beard Oil", "Shaving Cream", "Aftershave")),
    ("Tools & Accessories", ("Makeup Brush", "Hair Dryer", "Eyelash Curler")),
    ("Lip Care", ("Lip Balm", "Lipstick", "Lip Gloss")),
    ("Eye Makeup", ("Mascara", "Eyeliner", "Eyeshadow Palette")),
    ("Hair Styling", ("Hair Gel", "Styling Mousse", "Hairspray")),
    ("Hair Color", ("Hair Dye", "Root Touch-Up", "Color Gloss")),
    ("Face Masks", ("Sheet Mask", "Clay Mask", "Peel-Off Mask")),
    ("Anti-Aging", ("Retinol Cream", "Wrinkle Filler", "Firming Eye Cream")),
    ("Acne Treatment", ("Spot Treatment", "Pimple Patch", "Clarifying Toner")),
    ("Deodorants", ("Deodorant Stick", "Antiperspirant", "Deodorant Spray")),
    ("Foot Care", ("Foot Cream", "Callus Remover", "Foot Soak")),
    ("Hand Care", ("Hand Cream", "Hand Sanitizer", "Hand Soap")),
)
# Categories beyond the vocabulary repeat it with a series word ("Skin Care Pro", "Pro Serum").
_SERIES = ("Pro", "Plus", "Max", "Luxe", "Eco", "Mini", "Ultra", "Prime")
_ADJECTIVES = (
    "Gentle", "Daily", "Classic", "Advanced", "Natural", "Intensive", "Soothing", "Radiant",
    "Pure", "Professional", "Nourishing", "Lightweight", "Revitalizing", "Organic", "Essential",
    "Deluxe",
)  # fmt: skip
_CLAIMS = (
    "Dermatologist tested.", "Cruelty free.", "Fragrance free.", "Vegan formula.",
    "Long lasting.", "Travel size.", "Paraben free.", "For all skin types.",
)  # fmt: skip
_BRAND_HEADS = (
    "Aur", "Bel", "Cor", "Del", "Ev", "Flor", "Glo", "Hal", "Iri", "Jun", "Kal", "Lum", "Mir",
    "Nov", "Opa", "Pur", "Quin", "Ros", "Sol", "Ter", "Ulv", "Ver", "Wil", "Xen", "Yar", "Zel",
)  # fmt: skip
_BRAND_TAILS = ("a", "elle", "ora", "ique", "is", "ina", "o", "ette", "ara", "ene")


@dataclass
class SyntheticTruth:
    """The planted structure, indexed by generator item number (the digits of ``"S0000123"``)
    and generator user number (the digits of ``"U000001"``).

    Map a built catalogue's dense ids to item numbers with :meth:`item_numbers` first: building
    sequences drops items without events and renumbers the rest.

    Attributes:
        category_names: ``[num_categories]`` second level of each category path.
        category_words: ``[num_categories]`` the title nouns of each category (only its items use them).
        brand_names: ``[num_brands]``.
        brand_category: ``[num_brands]`` int64 the category of each brand.
        item_category: ``[num_items]`` int64 the category of each item.
        item_brand: ``[num_items]`` int64 the brand of each item (one of its category's).
        popularity: ``[num_items]`` float64 the item's Zipf probability within its category
            (sums to 1 over each category).
        successor: ``[num_items]`` int64 the next item on the item's category cycle.
        user_interests: ``[num_users, interests_per_user]`` int64 each user's categories.
        lengths: ``[num_users]`` int64 each user's sequence length.
        sequences: ``[num_users, max_length]`` int64 each user's items in time order, ``-1``
            after the user's length.
        sequential: ``[num_users, max_length]`` bool whether the item was the successor of the
            one before (a sequential step, not a popularity draw nor a repeat replacement).
    """

    category_names: list[str]
    category_words: list[tuple[str, ...]]
    brand_names: list[str]
    brand_category: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    popularity: np.ndarray
    successor: np.ndarray
    user_interests: np.ndarray
    lengths: np.ndarray
    sequences: np.ndarray
    sequential: np.ndarray

    @staticmethod
    def item_numbers(catalog: ItemCatalog) -> np.ndarray:
        """``[len(catalog)]`` int64 the generator item number of each catalogue entry."""
        return np.array([int(ext[1:]) for ext in catalog.external_ids], dtype=np.int64)

    def category_of(self, catalog: ItemCatalog) -> np.ndarray:
        """``[len(catalog)]`` int64 the category of each entry of a (built) catalogue."""
        return self.item_category[self.item_numbers(catalog)]


class SyntheticSource(DataSource):
    """Generated Amazon-style data with planted category, popularity and sequential structure.

    Args:
        num_users: number of users (one sequence each).
        num_items: number of catalogue items.
        num_categories: number of item categories (sizes differ by at most one).
        num_brands: number of brands, spread over the categories (at least ``num_categories``).
        min_length: shortest sequence (lengths are uniform in ``[min_length, max_length]``).
        max_length: longest sequence; at most the size of the smallest category
            (``num_items // num_categories``), so that no item needs to repeat.
        interests_per_user: latent categories per user, that the popularity draws come from.
        p_sequential: probability that the next item is the current item's successor on its
            category cycle (the learnable sequential pattern); 0 gives popularity draws only.
        zipf_exponent: exponent ``s`` of the within-category popularity, weight ``1 / rank**s``
            (0 is uniform).
        seed: seed of every random draw; the same seed gives the same data.
        skip_bad_lines: kept for the reader interface; the generator makes no bad lines.
        missing_items: kept for the reader interface; the generator makes no missing items.
    """

    def __init__(
        self,
        num_users: int = 1000,
        num_items: int = 500,
        num_categories: int = 10,
        num_brands: int = 30,
        min_length: int = 5,
        max_length: int = 20,
        interests_per_user: int = 2,
        p_sequential: float = 0.6,
        zipf_exponent: float = 1.1,
        seed: int = 0,
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        if num_users < 1:
            raise ValueError(f"num_users must be at least 1, got {num_users}")
        if num_categories < 1 or num_items < num_categories:
            raise ValueError(
                f"need 1 <= num_categories <= num_items, got {num_categories} categories for {num_items} items"
            )
        if num_brands < num_categories:
            raise ValueError(
                f"num_brands ({num_brands}) must be at least num_categories ({num_categories}): every category needs a brand"
            )
        smallest = num_items // num_categories
        if not 1 <= min_length <= max_length <= smallest:
            raise ValueError(
                f"need 1 <= min_length <= max_length <= items in the smallest category ({num_items} // "
                f"{num_categories} = {smallest}) so that no item repeats; got min_length={min_length}, "
                f"max_length={max_length}"
            )
        if not 1 <= interests_per_user <= num_categories:
            raise ValueError(
                f"interests_per_user must be in [1, num_categories={num_categories}], got {interests_per_user}"
            )
        if not 0.0 <= p_sequential <= 1.0:
            raise ValueError(f"p_sequential must be in [0, 1], got {p_sequential}")
        if zipf_exponent < 0:
            raise ValueError(f"zipf_exponent must be >= 0, got {zipf_exponent}")
        self.num_users = num_users
        self.num_items = num_items
        self.num_categories = num_categories
        self.num_brands = num_brands
        self.min_length = min_length
        self.max_length = max_length
        self.interests_per_user = interests_per_user
        self.p_sequential = p_sequential
        self.zipf_exponent = zipf_exponent
        self.seed = seed
        self._truth: SyntheticTruth | None = None

    def describe(self) -> dict[str, Any]:
        """The generator's arguments (not the cached ground truth)."""
        return {k: v for k, v in super().describe().items() if not k.startswith("_")}

    @property
    def truth(self) -> SyntheticTruth:
        """The planted structure of the data :meth:`read` returns (generated on first use)."""
        if self._truth is None:
            self.read()
        assert self._truth is not None
        return self._truth

    def read(self) -> RawData:
        """Generate the catalogue and the events (users in order, each user's events in time order)."""
        catalog_seq, user_seq = np.random.SeedSequence(self.seed).spawn(2)
        item_rng, user_rng = np.random.default_rng(catalog_seq), np.random.default_rng(user_seq)
        truth, items, sampler = self._catalog(item_rng)
        self._users(user_rng, truth, sampler)
        self._truth = truth

        n, lengths = self.max_length, truth.lengths
        keep = np.arange(n)[None, :] < lengths[:, None]
        events = truth.sequences[keep]  # row-major: users in order, positions in order
        start = 1_400_000_000 + user_rng.integers(0, 3 * 365 * 86_400, size=self.num_users)
        gaps = user_rng.integers(600, 30 * 86_400, size=(self.num_users, n))
        times = (start[:, None] + np.cumsum(gaps, axis=1))[keep]
        user_ext = np.array([f"U{u:06d}" for u in range(self.num_users)])
        item_ext = np.array(list(items))
        return RawData(
            items=items,
            users=np.repeat(user_ext, lengths).tolist(),
            item_ids=item_ext[events].tolist(),
            timestamps=times.tolist(),
        )

    def _catalog(
        self, rng: np.random.Generator
    ) -> tuple[SyntheticTruth, dict[str, Item], _PopularitySampler]:
        """Categories, brands, popularity, successor cycles and the items' text."""
        n_items, n_cats, n_brands = self.num_items, self.num_categories, self.num_brands
        names, words = _category_vocabulary(n_cats)

        # Brand b belongs to category b % C, so category c has brands c, c + C, c + 2C, ...
        brand_category = np.arange(n_brands) % n_cats
        brands_per_cat = np.bincount(brand_category, minlength=n_cats)
        combos = [h + t for h in _BRAND_HEADS for t in _BRAND_TAILS]
        order = rng.permutation(len(combos))
        brand_names = [
            combos[order[b % len(combos)]]
            + (f" {b // len(combos) + 1}" if b >= len(combos) else "")
            for b in range(n_brands)
        ]

        item_category = rng.permutation(np.arange(n_items) % n_cats)
        item_brand = item_category + n_cats * (
            rng.random(n_items) * brands_per_cat[item_category]
        ).astype(np.int64)
        cat_sizes = np.bincount(item_category, minlength=n_cats)
        cat_starts = np.concatenate([[0], np.cumsum(cat_sizes)[:-1]])

        # Popularity: a random rank order inside each category, weight 1 / rank**s.
        # by_rank: the items grouped by category, in random (= rank) order inside each.
        by_rank = np.lexsort((rng.random(n_items), item_category))
        rank = np.arange(n_items) - np.repeat(cat_starts, cat_sizes) + 1
        weight = rank.astype(np.float64) ** -self.zipf_exponent
        cat_total = np.bincount(item_category[by_rank], weights=weight, minlength=n_cats)
        within = weight / cat_total[item_category[by_rank]]
        popularity = np.empty(n_items)
        popularity[by_rank] = within

        # Successor: an independent random cycle through each category.
        cycle = np.lexsort((rng.random(n_items), item_category))
        nxt = np.arange(1, n_items + 1)
        nxt[cat_starts + cat_sizes - 1] = cat_starts
        successor = np.empty(n_items, dtype=np.int64)
        successor[cycle] = cycle[nxt]

        noun_pick = rng.integers(0, 1 << 30, size=n_items)
        adjectives = rng.integers(0, len(_ADJECTIVES), size=(n_items, 2))
        claims = rng.integers(0, len(_CLAIMS), size=n_items)
        letters = rng.integers(0, 26, size=(n_items, 2))
        model_numbers = rng.integers(100, 1000, size=n_items)
        items: dict[str, Item] = {}
        for i in range(n_items):
            c, brand = int(item_category[i]), brand_names[item_brand[i]]
            noun = words[c][noun_pick[i] % len(words[c])]
            model = f"{chr(65 + letters[i, 0])}{chr(65 + letters[i, 1])}-{model_numbers[i]}"
            ext = f"S{i:07d}"
            items[ext] = Item.from_raw(
                ext,
                title=f"{brand} {_ADJECTIVES[adjectives[i, 0]]} {noun} {model}",
                brand=brand,
                categories=(ROOT_CATEGORY, names[c]),
                description=f"{_ADJECTIVES[adjectives[i, 1]]} {noun.lower()} from the {names[c].lower()} line of {brand}. {_CLAIMS[claims[i]]}",
            )

        cdf = item_category[by_rank] + _grouped_cumsum(within, cat_sizes)
        sampler = _PopularitySampler(by_rank, cdf, cat_starts + cat_sizes - 1)
        empty = np.zeros(0, dtype=np.int64)
        truth = SyntheticTruth(
            category_names=names,
            category_words=words,
            brand_names=brand_names,
            brand_category=brand_category.astype(np.int64),
            item_category=item_category.astype(np.int64),
            item_brand=item_brand.astype(np.int64),
            popularity=popularity,
            successor=successor,
            user_interests=empty,
            lengths=empty,
            sequences=empty,
            sequential=np.zeros(0, dtype=bool),
        )
        return truth, items, sampler

    def _users(
        self, rng: np.random.Generator, truth: SyntheticTruth, sampler: _PopularitySampler
    ) -> None:
        """Fill the user fields of ``truth``: interests, lengths, sequences (vectorised over users)."""
        n_users, n_len, k = self.num_users, self.max_length, self.interests_per_user
        rows = np.arange(n_users)
        interests = np.argsort(rng.random((n_users, self.num_categories)), axis=1)[:, :k]
        lengths = rng.integers(self.min_length, self.max_length + 1, size=n_users)
        seqs = np.full((n_users, n_len), -1, dtype=np.int64)
        sequential = np.zeros((n_users, n_len), dtype=bool)
        successor = truth.successor

        def interest_draw(users: np.ndarray) -> np.ndarray:
            return sampler.draw(rng, interests[users, rng.integers(0, k, size=len(users))])

        seqs[:, 0] = interest_draw(rows)
        for t in range(1, n_len):
            used = seqs[:, :t]
            step = rng.random(n_users) < self.p_sequential
            cand = np.where(step, successor[seqs[:, t - 1]], interest_draw(rows))
            repeat = (used == cand[:, None]).any(axis=1)
            for _ in range(8):  # redraw repeated popularity draws, keeping their distribution
                redraw = np.flatnonzero(repeat & ~step)
                if len(redraw) == 0:
                    break
                cand[redraw] = interest_draw(redraw)
                repeat[redraw] = (used[redraw] == cand[redraw, None]).any(axis=1)
            sequential[:, t] = step & ~repeat
            # Walk the category cycle on to an unused item; one exists, as fewer than
            # max_length <= category size items are used.
            while (walk := np.flatnonzero(repeat)).size:
                cand[walk] = successor[cand[walk]]
                repeat[walk] = (used[walk] == cand[walk, None]).any(axis=1)
            seqs[:, t] = cand

        past_end = np.arange(n_len)[None, :] >= lengths[:, None]
        seqs[past_end] = -1
        sequential[past_end] = False
        truth.user_interests = interests.astype(np.int64)
        truth.lengths = lengths.astype(np.int64)
        truth.sequences = seqs
        truth.sequential = sequential


@dataclass
class _PopularitySampler:
    """Within-category Zipf draws by one binary search each.

    ``cdf`` is the cumulative within-category popularity over ``items`` (grouped by category,
    in rank order) offset by the category: category ``c``'s values lie in ``(c, c + 1]``, so a
    draw for ``c`` is the first value above ``c + u``.
    """

    items: np.ndarray
    cdf: np.ndarray
    last: np.ndarray  # [num_categories] position of each category's last item

    def __post_init__(self) -> None:
        self.cdf[self.last] = np.arange(1, len(self.last) + 1)  # exact ends despite rounding

    def draw(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One item of each of ``categories``, by within-category popularity."""
        pos = np.searchsorted(self.cdf, categories + rng.random(len(categories)), side="right")
        return self.items[np.minimum(pos, self.last[categories])]


def _category_vocabulary(n: int) -> tuple[list[str], list[tuple[str, ...]]]:
    """Names and title nouns of ``n`` categories; past the vocabulary a series word is added."""
    names, words = [], []
    for c in range(n):
        name, nouns = _CATEGORIES[c % len(_CATEGORIES)]
        series = c // len(_CATEGORIES)
        if series:
            tag = _SERIES[series - 1] if series <= len(_SERIES) else f"Series {series + 1}"
            name, nouns = f"{name} {tag}", tuple(f"{tag} {noun}" for noun in nouns)
        names.append(name)
        words.append(nouns)
    return names, words


def _grouped_cumsum(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every group of ``sizes`` consecutive values."""
    total = np.cumsum(values)
    ends = np.cumsum(sizes) - 1
    before = np.concatenate([[0.0], total[ends[:-1]]])
    return total - np.repeat(before, sizes)
