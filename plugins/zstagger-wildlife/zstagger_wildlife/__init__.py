"""Camera-trap species for wildlife monitoring: a complete zstagger plugin.

A taxonomy (below), an image source for camera-trap cards (:mod:`.cards`, ``camtrap://``)
and a result sink for a sightings log (:mod:`.sightings`, ``sightings://``): the hooks are
this module's names, so the one entry point brings all three.
"""

from zstagger import Label, Taxonomy, hookimpl

from .cards import CardSource, register_image_sources  # noqa: F401
from .sightings import SightingsSink, register_result_sinks  # noqa: F401

SPECIES = {
    # name: (text, synonyms, look-alikes)
    "red_deer": ("a red deer", ["a stag with antlers", "a hind"], []),
    "roe_deer": ("a roe deer", ["a small deer"], []),
    "wild_boar": ("a wild boar", ["a wild pig"], []),
    "red_fox": ("a red fox", ["a fox"], []),
    "badger": ("a badger", ["a European badger"], []),
    "wolf": ("a wolf", ["a grey wolf"], []),
    "lynx": ("a lynx", ["a Eurasian lynx"], []),
    "hare": ("a hare", ["a brown hare", "a rabbit"], []),
    "squirrel": ("a squirrel", ["a red squirrel"], []),
    "bird": ("a bird", ["a pheasant", "a crow", "an owl"], []),
    "domestic_dog": ("a domestic dog", ["a dog on a lead"], []),
    "human": ("a person", ["a hiker", "a hunter", "a forest worker"], []),
    "vehicle": ("a vehicle", ["a car on a forest track", "a tractor"], []),
}

WILDLIFE = Taxonomy(
    name="wildlife",
    version="0.1.0",
    description="Camera-trap images from European forests: which animal (or person, or nothing) triggered the camera.",
    mode="single",
    templates=[
        "a camera trap photo of {}.",
        "a trail camera image of {} at night.",
        "a blurry infrared photo of {}.",
    ],
    default_threshold=0.3,
    labels=[Label(name=name, text=text, synonyms=synonyms) for name, (text, synonyms, _) in SPECIES.items()]
    + [
        Label(
            name="empty",
            text="an empty forest scene",
            synonyms=["grass moving in the wind", "an empty trail at night"],
            background=True,
        )
    ],
)


@hookimpl
def register_taxonomies(register):
    register(WILDLIFE)
