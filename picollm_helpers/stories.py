"""A deterministic, offline generator of short children's stories in the TinyStories style.

This is a *synthetic* stand-in for the TinyStories dataset (roneneldan/TinyStories), used when
the Hugging Face hub cannot be reached. A story is an opening that introduces a hero, one of 13
story arcs (a lost toy, a new friend, a fear overcome, sharing, a trip, a storm, baking, a race,
...), and an ending with a moral. The combinatorial variety (thousands of names, objects, places
and sentence variants) gives a language model enough to learn for thousands of steps, while the
simple grammar keeps the lessons readable.

The story parts are data: each is a table (a list) of steps, run in order by one engine, `tell`.
A step is one of

    ["{Name} waved.", "{He} smiled."]   say one of these templates, filled and capitalised
    ("chance", p, steps)                 run the nested steps with probability p ...
    ("chance", p, steps, otherwise)      ... or else the other ones
    ("choose", "a b", rows)              pick one row (a tuple, or a string for one name), fill
                                         its templates and bind them to the slots {a} and {b}
    ("sample", "a b", pool)              bind distinct entries of pool to {a} and {b}
    ("let", "a", template)               bind a filled template to {a}

Templates are filled from a story's slots: the hero ({name}, {he}, {him}, {his}, {desc}, ...), a
friend ({fname}, {fhe}, ...), a parent ({parent}, {phe}, ...), places, objects and moods, all
pre-picked by make_context; {Name}, {He}, {His}, {fName}, ... are the capitalised forms, and the
few slots in DERIVED are computed from others when a template asks for them. Every random draw
goes through the story's own rng in table order, so the tables fully determine the corpus.

    >>> from picollm_helpers.stories import generate_stories
    >>> generate_stories(2)[0][:40]
    'Once upon a time, there was a ...'  # doctest: +SKIP

Story i depends only on (i, seed), never on n: generate_stories(100) is a prefix of
generate_stories(20_000).
"""

from __future__ import annotations

import functools
import random
import re
import string

# Bump when the templates change, so on-disk caches of the corpus are rebuilt.
GENERATOR_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Word tables

GIRL_NAMES = """Lily Sue Mia Amy Lucy Emma Anna Sara Zoe Ella Ruby Rosie Daisy Molly Kate Jane Lena
Nora Ivy Grace Chloe Sophie Maya Bella Hannah Olivia Ava Leah Julia Clara Alice Ellie Poppy Hazel
Luna Stella Nina Tina Kim Jenny Beth Megan Abby Emily Fiona Greta Heidi Iris Jade Kira Layla Maria
Naomi Paula Rita Sally Tara Vera Wendy Zara Amelia Isla Eva Lola Millie Penny Holly June Rose Pearl
Gwen Susie Carla Dora Edith Freya Gina Lisa Mona Nell Olga Polly Rhea Tilly""".split()

BOY_NAMES = """Tim Ben Tom Max Sam Jack Leo Joe Bob Dan Jake Luke Noah Finn Alex Adam Eli Owen Ryan
Theo Oscar Henry Oliver Lucas Mark Paul Peter Nick Jim Kevin Billy Timmy Johnny Danny Eddie Freddie
George Harry Ian Jason Kyle Liam Mike Ned Ollie Pete Ray Ricky Ted Will Zack Andy Carl Dave Evan
Frank Gus Hugo Ivan Jonah Kai Milo Nate Otto Seth Toby Victor Wes Arlo Ezra Felix Jasper Louis
Miles Ruben Simon Bruno Caleb Dylan Elliot Hank Marco Rory""".split()

PET_NAMES = """Pip Buddy Spot Fluffy Whiskers Coco Bubbles Patch Sunny Biscuit Pepper Ginger Snowy Tiny
Bun Bingo Rusty Shadow Mittens Nibbles Squeaky Hoppy Fuzzy Pebble Honey Cookie Sparky Ziggy Toffee
Maple Pumpkin Waffles Peanut Muffin Button Noodle Bean Clover Pickles Socks Marble Acorn Puddle
Jelly Sprout Twinkle Dusty Fudge Olive Bubba Boots Pogo Nutmeg Crumbs Berry""".split()

# (animal, the sound it makes, how it moves)
ANIMALS = [
    ("cat", "meow", "padded"), ("dog", "woof", "ran"), ("puppy", "yip", "bounced"),
    ("kitten", "mew", "scampered"), ("bunny", "squeak", "hopped"), ("rabbit", "squeak", "hopped"),
    ("bird", "tweet", "flew"), ("duck", "quack", "waddled"), ("frog", "ribbit", "jumped"),
    ("mouse", "squeak", "scurried"), ("bear", "growl", "lumbered"), ("fox", "yip", "trotted"),
    ("owl", "hoot", "flew"), ("squirrel", "chatter", "scampered"), ("pig", "oink", "trotted"),
    ("cow", "moo", "walked"), ("horse", "neigh", "galloped"), ("sheep", "baa", "trotted"),
    ("lamb", "baa", "skipped"), ("goat", "maa", "climbed"), ("chicken", "cluck", "pecked"),
    ("turtle", "hum", "crawled"), ("fish", "blub", "swam"), ("lion", "roar", "strolled"),
    ("tiger", "roar", "prowled"), ("elephant", "toot", "stomped"), ("monkey", "ooh", "swung"),
    ("giraffe", "hum", "walked"), ("zebra", "neigh", "galloped"), ("deer", "snort", "leaped"),
    ("hedgehog", "sniff", "shuffled"), ("raccoon", "chirp", "sneaked"), ("beaver", "slap", "swam"),
    ("penguin", "honk", "waddled"), ("seal", "bark", "slid"), ("dolphin", "click", "swam"),
    ("butterfly", "hum", "fluttered"), ("bee", "buzz", "buzzed"), ("ladybug", "hum", "crawled"),
    ("snail", "hum", "crept"), ("ant", "hum", "marched"), ("crab", "click", "scuttled"),
    ("parrot", "squawk", "flew"), ("pony", "neigh", "trotted"), ("donkey", "hee-haw", "trotted"),
    ("goose", "honk", "waddled"), ("swan", "honk", "glided"), ("kangaroo", "thump", "bounced"),
    ("koala", "grunt", "climbed"), ("panda", "grunt", "rolled"), ("dragon", "roar", "flew"),
    ("dinosaur", "roar", "stomped"), ("unicorn", "neigh", "pranced"), ("robin", "tweet", "flew"),
    ("bat", "squeak", "flapped"), ("otter", "squeak", "swam"), ("mole", "sniff", "dug"),
    ("worm", "hum", "wiggled"), ("spider", "hum", "crawled"), ("whale", "whoosh", "swam"),
]

HERO_ADJS = """little happy kind curious brave shy silly smart cheerful playful clever gentle friendly
sleepy bouncy quiet tiny helpful funny busy young sweet proud lively jolly careful""".split()

ANIMAL_ADJS = """little small fluffy fuzzy soft big brown white gray spotted striped tiny young
friendly happy curious old shy clever silly hungry sleepy speedy chubby wise""".split()

COLORS = "red blue green yellow pink purple orange white black brown gold silver".split()

OBJECT_ADJS = """big small shiny soft old new pretty special little bright fuzzy round tiny smooth
sparkly magic wooden striped spotted fancy""".split()

# Things a hero can own, lose, share or break.
OBJECTS = """ball kite doll bear car train boat robot puzzle book crayon drum whistle balloon hat
scarf shoe sock blanket pillow cup spoon bucket shovel ring necklace bracelet button key box bag
basket jar bell marble rock shell feather umbrella bike scooter wagon sled truck plane rocket crown
wand clock lamp map coin sticker ribbon bow pencil brush mirror watch backpack jacket mitten boot
glove puppet flute guitar trumpet camera compass bottle gem ticket letter card picture drawing
comb teapot lantern yo-yo dinosaur unicorn horn tambourine harmonica xylophone kazoo pinwheel
telescope magnet flashlight notebook tiara sword shield cape mask slipper sweater hairbrush
seashell pinecone crystal sailboat submarine helicopter tractor firetruck bulldozer marionette
""".split() + ["snow globe", "music box", "piggy bank", "rubber duck", "toy horse", "hula hoop",
               "jump rope", "pirate hat", "teddy bear", "toy car", "paper airplane"]

PLACES = """park garden forest beach lake river pond farm zoo school library playground market
bakery castle meadow hill cave island jungle field backyard attic barn town village museum circus
fair pool woods orchard valley harbor camp mountain shore swamp station aquarium greenhouse
lighthouse creek waterfall cottage palace theater airport bookstore""".split() + [
    "toy store", "candy shop", "ice rink", "pumpkin patch", "sunflower field", "train station",
    "fire station", "duck pond", "apple farm", "bus stop"]

PLACE_ADJS = """big quiet sunny green busy old little pretty noisy shady windy sleepy bright
peaceful colorful huge""".split()

# Where a lost thing turns up.
HIDING_SPOTS = [
    "under the bed", "behind the couch", "in the toy box", "under a big leaf", "in the tall grass",
    "next to the pond", "inside {his} boot", "under the slide", "in the sandbox", "behind a tree",
    "in the dog's bed", "in the laundry basket", "under the table", "in {his} own pocket",
    "on top of the shelf", "in the flower bed", "by the fence", "in a bird's nest",
    "under a pile of leaves", "behind the door", "in the kitchen sink", "inside a flower pot",
    "under the stairs", "in the car", "on the windowsill", "in the mailbox", "under the swing",
    "inside a hollow log", "in the rain boots", "behind the curtains", "in the cookie jar",
]

TREATS = """cookies cupcakes muffins pancakes apples bananas berries carrots sandwiches pies tarts
biscuits waffles donuts pretzels grapes cherries peaches plums pears oranges strawberries
blueberries nuts cakes candies crackers lollipops""".split()

BAKES = ["a cake", "cookies", "bread", "a pie", "muffins", "cupcakes", "a pizza", "buns",
         "pancakes", "a loaf of banana bread", "lemon bars", "a cherry tart", "oatmeal cookies",
         "a carrot cake", "ginger snaps", "a berry pie"]

INGREDIENTS = ["flour", "sugar", "eggs", "butter", "milk", "honey", "salt", "cinnamon",
               "chocolate chips", "raisins", "oats", "vanilla", "lemon juice", "nuts", "jam"]

ACTIVITIES = [
    "play with {his} blocks", "run in the grass", "jump in puddles", "draw pictures",
    "sing songs", "read books", "dance", "swim", "climb trees", "ride {his} bike",
    "build sandcastles", "pick flowers", "chase butterflies", "look at the stars", "paint",
    "play hide and seek", "fly {his} kite", "splash in the water", "dig in the dirt",
    "listen to stories", "play games", "skip rope", "roll down the hill", "watch the clouds",
    "collect shells", "feed the ducks", "count the birds", "make mud pies", "blow bubbles",
    "play tag", "hum little tunes", "build forts with pillows", "look for bugs", "bounce {his} ball",
    "play dress up", "make paper boats", "jump rope", "swing on the swings", "play the drums",
    "stack cups", "splash in the bath", "play in the snow", "throw sticks", "roll in the leaves",
]

PARENTS = [("mom", "she"), ("dad", "he"), ("grandma", "she"), ("grandpa", "he"),
           ("aunt", "she"), ("uncle", "he"), ("big sister", "she"), ("big brother", "he"),
           ("mommy", "she"), ("daddy", "he"), ("nana", "she"), ("papa", "he")]

TIMES = ["morning", "afternoon", "evening", "day"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEATHER = ["sunny", "warm", "bright", "windy", "cool", "cloudy", "lovely", "hot", "crisp",
           "beautiful", "quiet", "breezy", "foggy", "chilly"]
SEASONS = ["spring", "summer", "fall", "winter"]

SCENERY = [
    "The sun was shining, and the birds were singing.",
    "The leaves on the trees were red, orange and yellow.",
    "Snow covered the ground like a soft white blanket.",
    "The grass was wet with dew and sparkled in the light.",
    "Fluffy white clouds drifted across the blue sky.",
    "The air smelled like flowers and fresh bread.",
    "A gentle breeze made the tall grass wave.",
    "Bees buzzed from flower to flower.",
    "Frogs croaked by the water, and crickets chirped.",
    "The puddles shone like little mirrors.",
    "Icicles hung from the roof, and the windows were frosty.",
    "Everything was calm and peaceful.",
    "Children were laughing and playing everywhere.",
    "The streets were busy with people and wagons.",
    "Pink blossoms floated down from the cherry trees.",
    "The moon was round and bright, and the stars twinkled.",
    "Squirrels gathered acorns for the cold months ahead.",
    "The river sparkled as it rushed over the stones.",
    "The wind whistled through the branches.",
    "Ducks paddled in the pond, and a heron stood very still.",
    "The smell of warm pancakes drifted from the kitchen.",
    "Rain tapped softly on the window.",
    "Butterflies danced over the meadow.",
    "The hills were covered with purple and yellow wildflowers.",
]

HAPPY = ["happy", "glad", "excited", "proud", "joyful", "thankful", "cheerful", "delighted",
         "grateful", "pleased"]
SAD = ["sad", "upset", "worried", "unhappy", "lonely", "gloomy", "miserable", "grumpy"]
# All of these take "of": "scared of the dark".
SCARED = ["scared", "afraid", "frightened", "terrified", "scared", "afraid"]

# Speech verbs that fit a statement or an exclamation (questions use "asked").
SAID = ["said", "shouted", "cried", "called", "exclaimed", "yelled", "said", "said"]

# Things to be afraid of: (noun phrase, what doing it looks like, where it is)
FEARS = [
    ("the dark", "sleep with the light off", "in {his} room"),
    ("the big slide", "go down the big slide", "at the playground"),
    ("deep water", "swim in the lake", "at the lake"),
    ("thunder", "stay in bed during the storm", "at home"),
    ("the tall tree", "climb the tall tree", "in the backyard"),
    ("the new school", "walk into the new school", "at school"),
    ("the old bridge", "cross the old bridge", "over the river"),
    ("the big waves", "jump over the waves", "at the beach"),
    ("riding a bike", "ride a bike without help", "on the street"),
    ("the doctor", "visit the doctor", "in town"),
    ("the high diving board", "jump off the diving board", "at the pool"),
    ("the noisy vacuum", "stay in the room with the vacuum", "at home"),
    ("the big horse", "ride the big horse", "on the farm"),
    ("singing on stage", "sing in front of everyone", "at the school show"),
    ("the shadow on the wall", "look at the shadow", "in {his} room"),
]

# Someone who needs help: (who, what is wrong, how the hero helps, thanks)
TROUBLES = [
    ("a little bird", "had a hurt wing", "made a soft bed of grass for it", "chirped a happy song"),
    ("an old lady", "had too many heavy bags", "carried the bags to her door",
     "gave {him} a warm cookie"),
    ("a small kitten", "was stuck high up in a tree", "ran to get a ladder with {his} {parent}",
     "purred and rubbed against {his} leg"),
    ("a baby duck", "could not find its mother", "led it back to the pond",
     "quacked and swam to its mother"),
    ("a tiny ant", "could not carry a big crumb", "pushed the crumb all the way to the ant hill",
     "waved its tiny legs"),
    ("an old man", "had dropped his glasses in the grass", "looked in the grass until {he} found them",
     "smiled and said thank you"),
    ("a puppy", "was shivering in the rain", "wrapped it in {his} jacket",
     "licked {his} face"),
    ("a little boy", "had fallen off his bike", "helped him up and found a bandage",
     "gave {him} a big hug"),
    ("a turtle", "was stuck on its back", "gently turned it over",
     "slowly nodded its head"),
    ("a squirrel", "could not reach its nuts", "put the nuts on a low branch",
     "chattered a happy thank you"),
    ("a girl", "had lost her way home", "walked with her to the big red house",
     "waved and said thank you"),
    ("a bunny", "had its paw caught in a bush", "carefully pulled the branches apart",
     "hopped around in a happy circle"),
    ("the farmer", "had lost his cows", "helped call the cows back to the barn",
     "gave {him} a glass of fresh milk"),
    ("a fish", "was flapping on the sand", "put it back into the water",
     "splashed its tail"),
]

SEEDS = [("sunflower", "tall and yellow"), ("tomato", "round and red"), ("carrot", "long and orange"),
         ("rose", "red and sweet"), ("pumpkin", "big and orange"), ("bean", "long and green"),
         ("daisy", "white and pretty"), ("tulip", "bright and purple"), ("strawberry", "red and juicy"),
         ("apple tree", "strong and full of apples"), ("pea", "green and sweet"),
         ("lettuce", "green and crunchy"), ("watermelon", "big and juicy"), ("lily", "white and tall")]

GIFTS = ["a card with a big heart", "a drawing of the two of them", "a necklace made of beads",
         "a paper crown", "a box of {treats}", "a painted rock", "a little clay {animal}",
         "a bunch of flowers", "a song", "a paper kite", "a bracelet of colorful string",
         "a book of stories", "a shiny stone from the river", "a picture frame made of sticks"]

SIGHTS = ["tall trees", "pretty flowers", "funny monkeys", "big ships", "shiny shells",
          "old houses", "a giant wheel", "colorful fish", "sleepy lions", "red barns",
          "white clouds", "green hills", "busy bees", "tiny crabs", "bright lights",
          "a rainbow of kites", "long trains", "sandy paths", "a waterfall", "a little bridge",
          "bouncing goats", "a castle made of sand", "a man selling balloons", "big pumpkins",
          "silly clowns", "a tall lighthouse", "wild ponies", "giant turtles", "a hot air balloon",
          "a statue of a horse", "sparkling fountains", "a field of tulips", "a huge dinosaur skeleton",
          "jellyfish glowing in the dark", "a band playing music", "a merry-go-round",
          "fireflies blinking", "a juggler with five balls", "a snowy mountain top"]

MORALS = {
    "lost": ["being careful with the things you love is important",
             "asking for help makes hard things easier",
             "good friends help you look for what you lost",
             "it is good to put things back where they belong"],
    "friend": ["saying hello can make a new friend",
               "a friend can be anyone, big or small",
               "everyone feels better with a friend",
               "being kind to someone new is always a good idea"],
    "fear": ["being brave means trying even when you are scared",
             "things are often less scary than they seem",
             "it is okay to be afraid, and it is good to try anyway",
             "small steps can help you be brave"],
    "share": ["sharing is caring",
              "sharing makes everyone happy",
              "things are more fun when you share them",
              "a happy friend is worth more than a toy"],
    "trip": ["the world is full of wonderful things to see",
             "the best trips are the ones you take with family",
             "it is fun to try new things",
             "staying close to your family keeps you safe"],
    "storm": ["even a storm does not last forever",
              "after the rain comes the sun",
              "it is good to stay calm when the weather is bad",
              "being together makes a storm less scary"],
    "bake": ["making mistakes is part of learning",
             "good things take time",
             "food tastes better when you share it",
             "cooking with family is the best fun"],
    "race": ["helping a friend is more important than winning",
             "playing fair is the best way to play",
             "it does not matter who wins if you have fun",
             "friends are better than prizes"],
    "help": ["helping others makes you feel good inside",
             "even a small helper can do a big thing",
             "kindness always comes back to you",
             "it is good to help someone in need"],
    "sorry": ["telling the truth is always best",
              "saying sorry makes things right",
              "it is better to be honest than to hide a mistake",
              "everyone makes mistakes, and that is okay"],
    "garden": ["good things take time and care",
               "patience helps things grow",
               "if you take care of something, it will grow",
               "waiting is hard, but it is worth it"],
    "gift": ["the best gifts come from the heart",
             "making someone smile is the best present",
             "a gift you make yourself is very special",
             "friends make every day special"],
    "listen": ["it is important to listen to your {parent}",
               "rules are there to keep us safe",
               "it is good to listen when someone warns you",
               "being careful is better than being sorry"],
}

# Warnings not listened to: (where, why it is dangerous, what goes wrong, how it ends)
DANGERS = [
    ("the pond", "the edge is slippery", "slipped and fell into the water",
     "got all wet and cold"),
    ("the muddy hill", "it is very muddy", "slid all the way down",
     "was covered in mud from head to toe"),
    ("the old fence", "it has sharp nails", "tore {his} shirt on a nail",
     "had a big scratch on {his} arm"),
    ("the bee hive", "the bees might sting", "poked the hive with a stick",
     "got a sting on {his} nose"),
    ("the tall rocks", "they are too high", "climbed up and could not get down",
     "had to wait for help for a long time"),
    ("the deep woods", "it is easy to get lost", "followed {an_animal} into the trees",
     "was lost and could not find the way home"),
    ("the hot stove", "it is very hot", "touched the pot",
     "burned {his} finger"),
]

# ----------------------------------------------------------------------------------------------
# Grammar helpers

PRONOUNS = {"she": ("she", "her", "her", "herself"), "he": ("he", "him", "his", "himself")}


def choose(rng: random.Random, options):
    """rng.choice, about 5x faster (random.choice's rejection sampling dominates otherwise)."""
    return options[int(rng.random() * len(options))]


def an(phrase: str) -> str:
    """'apple' -> 'an apple', 'ball' -> 'a ball'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def cap(sentence: str) -> str:
    """Capitalise the first letter, skipping a leading quote."""
    i = 1 if sentence.startswith('"') else 0
    return sentence[:i] + sentence[i].upper() + sentence[i + 1:]


def character(rng: random.Random, prefix: str = "") -> dict:
    """A named character with agreeing pronouns: a girl, a boy, or an animal."""
    r = rng.random()
    if r < 0.4:
        sex, name, kind = "she", choose(rng, GIRL_NAMES), "girl"
        adj = choose(rng, HERO_ADJS)
    elif r < 0.8:
        sex, name, kind = "he", choose(rng, BOY_NAMES), "boy"
        adj = choose(rng, HERO_ADJS)
    else:
        sex = choose(rng, ("she", "he"))
        name = choose(rng, PET_NAMES)
        kind, sound, move = choose(rng, ANIMALS)
        adj = choose(rng, ANIMAL_ADJS)
    he, him, his, himself = PRONOUNS[sex]
    c = {"name": name, "kind": kind, "adj": adj, "he": he, "him": him, "his": his,
         "himself": himself, "desc": f"{an(adj)} {kind} named {name}",
         "animal": kind not in ("girl", "boy")}
    return {prefix + k: v for k, v in c.items()}


def make_context(rng: random.Random) -> dict:
    """Pre-pick every slot a story may use, so templates only fill in names."""
    ctx = character(rng)
    ctx.update(character(rng, "f"))  # a friend: fname, fhe, fhim, fhis, fdesc, ...
    while ctx["fname"] == ctx["name"]:
        ctx.update(character(rng, "f"))
    parent, phe = choose(rng, PARENTS)
    ctx["parent"] = parent
    ctx["phe"], ctx["phim"], ctx["phis"], _ = PRONOUNS[phe]
    places = rng.sample(PLACES, 3)
    ctx.update(place=places[0], place2=places[1], place3=places[2],
               place_adj=choose(rng, PLACE_ADJS))
    ctx["obj"] = choose(rng, OBJECTS)
    ctx["obj_adj"] = choose(rng, COLORS) if rng.random() < 0.5 else choose(rng, OBJECT_ADJS)
    ctx["thing"] = f"{ctx['obj_adj']} {ctx['obj']}"
    ctx["a_thing"] = an(ctx["thing"])
    ctx["treats"] = choose(rng, TREATS)
    ctx["time"] = choose(rng, TIMES)
    ctx["day"] = choose(rng, DAYS)
    ctx["weather"] = choose(rng, WEATHER)
    ctx["season"] = choose(rng, SEASONS)
    ctx["happy"], ctx["happy2"] = rng.sample(HAPPY, 2)
    ctx["sad"] = choose(rng, SAD)
    ctx["scared"] = choose(rng, SCARED)
    ctx["said"], ctx["said2"], ctx["said3"] = rng.sample(SAID, 3)
    ctx["activity"] = choose(rng, ACTIVITIES).format_map(ctx)
    ctx["activity2"] = choose(rng, ACTIVITIES).format_map(ctx)
    ctx["spot"] = choose(rng, HIDING_SPOTS).format_map(ctx)
    ctx["spot2"] = choose(rng, HIDING_SPOTS).format_map(ctx)
    animal, sound, move = choose(rng, ANIMALS)
    ctx.update(animal=animal, sound=sound, move=move, an_animal=an(animal))
    return ctx


def caps(ctx: dict) -> dict:
    """Add capitalised variants ({He}, {His}, {Name}) used in the middle of templates."""
    c = dict(ctx)
    c.update(He=ctx["he"].capitalize(), His=ctx["his"].capitalize(), Name=ctx["name"],
             fName=ctx["fname"], fHe=ctx["fhe"].capitalize(), fHis=ctx["fhis"].capitalize())
    return c


# ----------------------------------------------------------------------------------------------
# The engine

# Slots computed from others, only when a template uses them.
DERIVED = {
    "a_place": lambda s: an(f"{s['place_adj']} {s['place']}"),
    "Parent": lambda s: cap(s["parent"]),
    "Why": lambda s: cap(s["why"]),
    "a_plant": lambda s: an(s["plant"]),
    "bake_name": lambda s: s["bake"].split()[-1],  # "a loaf of banana bread" -> "bread"
    # "a little bird" -> "the little bird"; "the farmer" stays as it is
    "the_who": lambda s: ("the " + s["who"].split(" ", 1)[1]
                          if s["who"].startswith(("a ", "an ")) else s["who"]),
}


class Slots(dict):
    """A story's slots; str.format_map consults __missing__ for the DERIVED ones."""

    def __missing__(self, key: str) -> str:
        return DERIVED[key](self)


Step = list | tuple  # see the module docstring


def _field_spans(template: str, slots: dict) -> list[tuple[int, int, str]]:
    """(start, end, field) of every {field} of `template` in template.format_map(slots)."""
    spans, pos = [], 0
    for literal, field, _, _ in string.Formatter().parse(template):
        pos += len(literal)
        if field is not None:
            n = len(("{" + field + "}").format_map(slots))
            spans.append((pos, pos + n, field))
            pos += n
    return spans


def tell(steps: list[Step], rng: random.Random, slots: dict,
         out: list[str] | None = None, fields: list | None = None) -> list[str]:
    """Run a table of steps; return the sentences said (appended to `out` when given).

    A plain dict of slots is copied first and left untouched; a Slots is bound into in place,
    which is how the opening, the arc and the ending of one story share theirs. With a list
    `fields`, each sentence said also appends (sentence, [(start, end, field), ...]): where the
    template placed each slot in it. Recording them draws nothing from rng.
    """
    if not isinstance(slots, Slots):
        slots = Slots(slots)
    if out is None:
        out = []
    for step in steps:
        if isinstance(step, list):  # by far the most common step: say one of the templates
            template = choose(rng, step)
            out.append(cap(template.format_map(slots)))
            if fields is not None:
                fields.append((out[-1], _field_spans(template, slots)))
            continue
        kind, arg, *rest = step
        if kind == "chance":
            if rng.random() < arg:
                tell(rest[0], rng, slots, out, fields)
            elif len(rest) > 1:
                tell(rest[1], rng, slots, out, fields)
        elif kind == "choose":
            names = arg.split()
            row = choose(rng, rest[0])
            row = (row,) if isinstance(row, str) else row
            slots.update(zip(names, [template.format_map(slots) for template in row]))
        elif kind == "sample":
            names = arg.split()
            slots.update(zip(names, rng.sample(rest[0], len(names))))
        elif kind == "let":
            slots[arg] = rest[0].format_map(slots)
        else:
            raise ValueError(f"unknown step kind {kind!r} in {step!r}")
    return out


# ----------------------------------------------------------------------------------------------
# The story tables

OPENING: list[Step] = [
    [
        "Once upon a time, there was {desc}.",
        "Once upon a time, there was {desc}.",
        "Once upon a time, there was {desc}.",
        "Once upon a time, in {a_place}, there lived {desc}.",
        "Once upon a time, there lived {desc}.",
        "One day, {desc} woke up early.",
        "There once was {desc} who lived near the {place}.",
        "Once upon a time, in a {place_adj} town, there was {desc}.",
    ],
    [
        "{He} loved to {activity}.",
        "{He} liked to {activity} and {activity2}.",
        "Every day, {he} liked to {activity}.",
        "{Name} was very {adj} and loved to {activity}.",
        "{He} had {a_thing} that {he} loved very much.",
        "{His} favorite thing to do was to {activity}.",
        "{He} lived with {his} {parent} in a little house by the {place}.",
    ],
    ("chance", 0.35, [SCENERY]),
    ("chance", 0.5, [[
        "{He} also had a pet {animal} that followed {him} everywhere.",
        "{His} {parent} always said that {he} was a good helper.",
        "{His} best friend was {fname}, who lived next door.",
        "When it was {weather} outside, {he} liked to go to the {place}.",
        "{He} was {adj}, but sometimes {he} felt {sad}.",
    ]]),
]

# The middles of stories; a story draws one uniformly from ARC_NAMES.
ARC_STEPS: dict[str, list[Step]] = {}

ARC_STEPS["lost"] = [
    [
        "One {weather} {time}, {name} took {his} {thing} to the {place}.",
        "One {time}, {name} went to the {place} with {his} {thing}.",
        "One {day}, {name} and {his} {parent} went to the {place}, and {name} brought {his} {thing}.",
    ],
    [
        "{He} played and played until the sun was low.",
        "{He} put it down to {activity} for a while.",
        "{He} was having so much fun that {he} forgot all about it.",
        "{He} set it on a bench and ran off to {activity}.",
    ],
    [
        "When it was time to go home, {name} looked for {his} {obj}, but it was gone!",
        "Later, {name} reached for {his} {obj}, but it was not there.",
        "Then {name} saw that {his} {obj} was missing.",
    ],
    [
        '"Oh no! Where is my {obj}?" {he} cried.',
        '"My {obj}! I lost my {obj}!" {name} {said}.',
        '"Where did it go?" {he} asked, with tears in {his} eyes.',
    ],
    [
        "{Name} felt very {sad}.",
        "{He} looked {spot2}, but it was not there.",
        "{He} looked near the {place2} and under every bush, but {he} could not find it.",
        "{He} searched and searched, but the {obj} was nowhere to be found.",
    ],
    ("chance", 0.5, [  # a friend helps look ...
        [
            "Just then, {fdesc} came by.",
            "Then {fdesc} walked up to {him}.",
            "Soon {fname}, {his} friend, came to see what was wrong.",
        ],
        [
            '"Why are you {sad}?" asked {fname}.',
            '"What is wrong?" {fname} asked.',
            '"Can I help you?" {fname} asked.',
        ],
        [
            '"I lost my {thing}," said {name}. "Will you help me find it?"',
            '"My {obj} is gone," said {name}. "I looked everywhere."',
        ],
        [
            "{fName} nodded, and they looked together.",
            '"Let\'s look together," said {fname}.',
            "{fName} smiled and said, \"Two friends can find anything!\"",
        ],
        ("let", "finder", "{fname}"),
    ], [  # ... or the hero asks a parent
        [
            "{Name} ran to {his} {parent} and told {phim} what happened.",
            "{His} {parent} saw {him} and gave {him} a hug.",
        ],
        [
            '"Don\'t worry," said {his} {parent}. "We will find it together."',
            '"Let\'s think," said {his} {parent}. "Where did you have it last?"',
        ],
        ("let", "finder", "{name}"),
    ]),
    [
        "At last, {finder} saw something {spot}. It was the {obj}!",
        "They looked {spot}, and there it was!",
        "Then {finder} found the {thing} {spot}.",
        "Suddenly, {an_animal} {move} by, and it had the {obj}!",
    ],
    [
        '"Thank you!" said {name}, and {he} hugged {his} {obj} tight.',
        "{Name} was so {happy} to have {his} {obj} back.",
        "{Name} jumped up and down. {He} was very {happy}.",
    ],
    [
        "From that day on, {name} always kept {his} {obj} close.",
        "After that, {name} was more careful with {his} things.",
        "That night, {name} put the {obj} right next to {his} bed.",
    ],
]

ARC_STEPS["friend"] = [
    [
        "One {time}, {name} went to the {place} to {activity}.",
        "One {weather} day, {name} was at the {place}.",
        "{Name} had just moved to a new town, and {he} did not know anyone.",
    ],
    [
        "{He} felt a little {sad} because {he} had no one to play with.",
        "All the other kids were playing together, and {name} felt {sad}.",
        "{He} wanted a friend to play with.",
    ],
    [
        "Then {he} saw {fdesc} sitting all alone.",
        "Then {he} saw {fdesc} near the {place2}.",
        "Just then, {fdesc} came over and sat down next to {him}.",
    ],
    ("choose", "shy", ["shy", "lonely", "quiet", "sad"]),
    [
        "{fName} looked {shy} too.",
        "{fName} was trying to {activity2}, but it was hard to do alone.",
        "{fName} was humming a little song.",
    ],
    [
        "{Name} was {scared} to say hello, but {he} took a deep breath.",
        "{Name} walked over with a big smile.",
        "{Name} waved and walked closer.",
    ],
    [
        '"Hi, I am {name}," {he} {said}. "Do you want to play with me?"',
        '"Hello! What is your name?" asked {name}.',
        '"Can I play too?" {name} asked.',
    ],
    [
        '"I am {fname}," said the {fkind}. "Yes, let\'s play!"',
        '"My name is {fname}," said the {fkind} with a smile. "I would love to play!"',
        'The {fkind} smiled. "I am {fname}. I was hoping someone would ask."',
    ],
    [
        "They played together all {time} long.",
        "Together, they liked to {activity} and {activity2}.",
        "They laughed and ran until the sun went down.",
        "They shared {treats} and told funny stories.",
    ],
    ("chance", 0.5, [[
        "When it was time to go home, {fname} gave {name} a hug.",
        '"Will you come back tomorrow?" asked {fname}. "Yes!" said {name}.',
        "{Name} had never had so much fun.",
    ]]),
    [
        "From that day on, {name} and {fname} were best friends.",
        "Now {name} was not {sad} anymore. {He} had a new friend.",
        "Every day after that, {name} and {fname} met at the {place}.",
    ],
]

ARC_STEPS["fear"] = [
    ("choose", "fear act where", FEARS),
    [
        "{Name} was {scared} of {fear}.",
        "There was one thing {name} did not like: {fear}.",
        "{Name} was brave about many things, but {he} was {scared} of {fear}.",
    ],
    [
        "One day, {his} {parent} asked {him} to {act} {where}.",
        "One {time}, {name} had to {act} {where}.",
        "All the other kids could {act}, but {name} could not.",
    ],
    [
        '"I can\'t do it," {name} {said}. "I am too {scared}."',
        '"What if something bad happens?" {he} asked.',
        '"No, no, no!" {name} {said}, and {he} hid behind {his} {parent}.',
    ],
    [
        "{His} {parent} knelt down and held {his} hand.",
        "{His} {parent} gave {him} a big hug.",
        "{fName}, {his} friend, came and stood next to {him}.",
    ],
    [
        '"It is okay to be {scared}," said {his} {parent}. "I will be right here."',
        '"You are braver than you think," said {his} {parent}.',
        '"Let\'s try it together, one little step at a time," {phe} said.',
        '"I was {scared} too, the first time," {fname} said. "Then it was fun!"',
    ],
    [
        "{Name} took a deep breath.",
        "{Name} closed {his} eyes and counted to three.",
        "{Name} thought about it for a long time.",
    ],
    [
        "Then, slowly, {he} tried to {act}.",
        "Then {he} did it: {he} began to {act}.",
        "Step by step, {he} got ready to {act}.",
    ],
    [
        "It was not scary at all! It was fun!",
        "{His} heart was beating fast, but nothing bad happened.",
        "At first it was hard, but then {he} started to smile.",
    ],
    [
        '"I did it!" {name} {said2}. "I am not {scared} anymore!"',
        '"Look at me!" shouted {name}. "I did it!"',
        '"That was easy!" {name} laughed.',
    ],
    [
        "{His} {parent} was very proud of {him}.",
        "Everyone clapped for {name}.",
        "{Name} felt {happy} and brave.",
    ],
]

ARC_STEPS["share"] = [
    # The hero's toy or a bag of treats; the grammar around it follows.
    ("choose", "item it some some_item Its", [
        ("{thing}", "it", "a turn with the {thing}", "{a_thing}", "It is"),
        ("{treats}", "them", "some {treats}", "a big bag of {treats}", "They are"),
    ]),
    [
        "One {time}, {name} had {some_item}.",
        "{Name} got {some_item} from {his} {parent}.",
        "One day, {name} brought {some_item} to the {place}.",
    ],
    [
        "{He} loved {it} very much.",
        "{He} did not want anyone else to touch {it}.",
        "{He} held {it} close and smiled.",
    ],
    [
        "Then {fdesc} came over.",
        "Soon {fname} came to play. {fHe} was {fadj}.",
        "{fdesc} saw {name} and walked over.",
    ],
    [
        '"Can I have {some}, please?" asked {fname}.',
        '"That looks fun! Can I try?" {fname} asked.',
        '"May I have {some}?" {fname} asked in a small voice.',
    ],
    [
        '"No! {Its} mine!" {name} {said}.',
        '"No," said {name}. "I want {it} all for me."',
        "{Name} shook {his} head and turned away.",
    ],
    [
        "{fName} looked down. {fHe} was very {sad}.",
        "{fName} walked away slowly, and {fhe} looked {sad}.",
        "{fName} sat down alone. A tear rolled down {fhis} cheek.",
    ],
    [
        "{Name} did not feel good inside.",
        "{Name} looked at {his} {item} and then at {fname}.",
        "{Name} remembered what {his} {parent} always said about sharing.",
    ],
    [
        '"Wait!" {name} {said2}. "You can have {some}."',
        '{Name} ran after {fname}. "I am sorry. Let\'s share!"',
        '"Here," said {name}. "We can share."',
    ],
    [
        "{fName} smiled a big smile.",
        '"Thank you!" said {fname}, and {fhe} gave {name} a hug.',
        "{fName} clapped {fhis} hands.",
    ],
    [
        "They had so much more fun together.",
        "Sharing made {name} feel warm and {happy}.",
        "They played together until it was time to go home.",
    ],
]

ARC_STEPS["trip"] = [
    ("sample", "s1 s2 s3", SIGHTS),
    [
        "One {weather} {season} day, {name} and {his} {parent} went on a trip to the {place}.",
        "One {day}, {his} {parent} said, \"Today we are going to the {place}!\"",
        "{Name} was {happy} because today the family was going to the {place}.",
    ],
    [
        "{He} packed {his} bag with {treats} and {a_thing}.",
        "They rode in the car for a long time, and {name} sang songs.",
        "They took the bus, and {name} looked out the window the whole way.",
        "They walked a long way, and {name} counted the birds in the sky.",
    ],
    [
        "At the {place}, there were {s1} and {s2}.",
        "When they got there, {name} saw {s1}, {s2} and {s3}.",
        "The {place} was full of {s1}.",
    ],
    [
        '"Look!" {name} {said}. "I see {s3}!"',
        '"Wow!" said {name}. "This is the best day ever!"',
        '"Can we stay here forever?" asked {name}.',
    ],
    ("chance", 0.6, [  # a little trouble on the way
        [
            "Then {name} wandered off to look at {an_animal}, and soon {he} could not see {his} {parent}.",
            "Then {name} dropped {his} {obj}, and it rolled far away.",
            "Then it started to get cold, and {name} began to feel tired.",
            "Then {an_animal} {move} right up to {name} and said \"{sound}!\"",
        ],
        [
            "{He} felt {scared}, but then {he} heard {his} {parent} call {his} name.",
            "{His} {parent} helped {him}, and soon everything was fine.",
            "{Name} laughed, and {his} {parent} laughed too.",
            "{He} stayed calm and waited, just like {his} {parent} had told {him}.",
        ],
    ]),
    [
        "They ate {treats} on a blanket and watched the {s1}.",
        "They took a picture to remember the day.",
        "{Name} found a little stone to take home.",
    ],
    [
        "When the sun went down, they went home. {Name} was tired but {happy}.",
        "On the way home, {name} fell asleep with a smile on {his} face.",
        "That night, {name} told {his} friend {fname} all about the trip.",
    ],
]

ARC_STEPS["storm"] = [
    [
        "One {time}, {name} was playing outside at the {place}.",
        "One {season} day, {name} and {fname} went to the {place} to {activity}.",
        "{Name} was in the {place} with {his} {thing}.",
    ],
    [
        "Suddenly, the sky got dark and the wind began to blow.",
        "Then big gray clouds rolled in, and it started to rain.",
        "All at once, there was a loud boom of thunder.",
    ],
    [
        '"A storm is coming!" {name} {said}.',
        '"What was that?" {name} asked, holding on to {his} {obj}.',
        '"We need to get inside!" shouted {fname}.',
    ],
    [
        "{He} ran to hide under a big tree, but {his} {parent} called {him} inside.",
        "{He} ran as fast as {he} could to the {place2}.",
        "They hid in an old shed near the {place2}.",
        "{His} {parent} ran out with a big umbrella and took {him} home.",
    ],
    [
        "The rain went pitter patter on the roof. {Name} felt {scared}.",
        "The wind was loud, and the trees were shaking.",
        "Lightning flashed, and {name} covered {his} eyes.",
    ],
    [
        '"It is just rain," said {his} {parent}. "We are safe and warm in here."',
        '"Let\'s count between the thunder and the lightning," said {fname}.',
        '"Storms are loud, but they don\'t last long," {his} {parent} said softly.',
    ],
    [
        "They drank warm milk and told stories while they waited.",
        "They sang a song to make the storm feel less scary.",
        "{Name} hugged {his} {obj} and waited.",
    ],
    [
        "After a while, the rain stopped and the sun came out.",
        "Soon the clouds went away, and the sky was blue again.",
        "At last the storm was over.",
    ],
    [
        "Then {name} saw a big, bright rainbow in the sky!",
        "There were puddles everywhere, and {name} jumped in every one of them.",
        "Everything smelled fresh and clean, and the birds began to sing.",
    ],
    [
        '"Look, a rainbow!" {name} {said2}. "The storm was not so bad after all."',
        "{Name} was not {scared} anymore. {He} was {happy}.",
        '"I like storms now," said {name}, "because they end with rainbows."',
    ],
]

ARC_STEPS["bake"] = [
    ("choose", "bake", BAKES),
    ("sample", "i1 i2 i3", INGREDIENTS),
    [
        "One {time}, {name} and {his} {parent} decided to bake {bake}.",
        "{Name} wanted to bake {bake} for {fname}.",
        "It was a {weather} day, and {name} wanted to make {bake} with {his} {parent}.",
    ],
    [
        "They got out a big bowl, a spoon, and some {i1}.",
        "{He} put on a little apron and washed {his} hands.",
        "{His} {parent} read the recipe out loud.",
    ],
    [
        "{Name} poured in the {i1} and the {i2}, and then {he} added the {i3}.",
        "They mixed the {i1} with the {i2} and stirred and stirred.",
        "First they added the {i1}. Then {name} put in the {i2} and a little {i3}.",
    ],
    [
        "But oh no! {Name} spilled the {i2} all over the floor.",
        "But {name} put in too much {i3}, and it did not taste good.",
        "But the {animal} jumped up on the table and knocked over the bowl.",
        "But {name} was in a hurry and forgot to mix it well.",
    ],
    [
        "{Name} felt {sad}. \"I ruined it,\" {he} said.",
        '"Oops!" said {name}. {He} wanted to cry.',
        "{Name} looked at the mess and sighed.",
    ],
    [
        '"That\'s okay," said {his} {parent}. "We can try again."',
        '{His} {parent} laughed. "Everyone makes mistakes. Let\'s fix it."',
        '"Mistakes help us learn," {his} {parent} said with a smile.',
    ],
    [
        "So they cleaned up and started over, more slowly this time.",
        "This time, {name} measured everything very carefully.",
        "They tried again, and this time {name} stirred it just right.",
    ],
    [
        "Soon the kitchen smelled sweet and warm.",
        "They put it in the oven and waited. {Name} watched through the little window.",
        "When it came out of the oven, it was golden and perfect.",
    ],
    [
        "{Name} shared it with {fname} and all the neighbors.",
        "They ate it together at the table, and it was yummy.",
        "{Name} gave the first piece to {his} {parent}.",
    ],
    [
        '"This is the best {bake_name} ever!" said {fname}.',
        '"Yum!" {name} {said2}. "We did it!"',
        "Everyone said it was delicious, and {name} felt {happy}.",
    ],
]

ARC_STEPS["race"] = [
    ("choose", "goal", ["the big tree", "the top of the hill", "the red fence", "the pond",
                        "the old gate", "the swings", "the barn", "the end of the road"]),
    [
        "One {time}, {name} and {fname} were playing at the {place}.",
        "{Name} and {his} friend {fname} loved to run.",
        "One {weather} day, {name} met {fdesc} at the {place}.",
    ],
    [
        '"Let\'s have a race to {goal}!" said {fname}.',
        '"I bet I can run faster than you!" {name} {said}.',
        '"Race you to {goal}!" shouted {name}.',
    ],
    [
        "They stood in a line. \"Ready, set, go!\"",
        "{fName} counted to three, and off they went!",
        "They both started running as fast as they could.",
    ],
    [
        "{Name} was in front. {He} wanted to win so much.",
        "The wind was in {his} hair, and {name} ran and ran.",
        "{Name} was fast, but {fname} was fast too.",
    ],
    [
        "Then {fname} tripped on a rock and fell down.",
        "Then {fname} slipped in the mud and hurt {fhis} knee.",
        "Then {fname} stopped. {fHe} had a pain in {fhis} side.",
    ],
    [
        '"Ouch!" cried {fname}.',
        '"Help!" {fname} called.',
        "{fName} sat on the ground and started to cry.",
    ],
    [
        "{Name} could see {goal}. {He} could win!",
        "{Name} was almost at {goal}.",
        "{Name} heard {fname} and stopped.",
    ],
    [
        "But {name} turned around and ran back to {fname}.",
        "But {he} did not want to leave {his} friend. {He} ran back.",
        "{Name} thought for a second, and then {he} went back to help.",
    ],
    [
        '"Are you okay?" asked {name}. "Let me help you up."',
        '"Hold my hand," said {name}. "We can walk together."',
        '"I am here," {name} said. "Winning is not important."',
    ],
    [
        "They walked to {goal} together, hand in hand.",
        "They crossed the finish line at the same time, laughing.",
        "They went to {goal} together, slowly, and both of them were winners.",
    ],
    [
        '"Thank you," said {fname}. "You are the best friend ever."',
        "{fName} smiled, and {name} felt {happy} inside.",
        "Everyone cheered for both of them.",
    ],
]

ARC_STEPS["help"] = [
    ("choose", "who trouble fix thanks", TROUBLES),
    [
        "One {time}, {name} was walking to the {place}.",
        "One {weather} day, {name} was playing near the {place}.",
        "{Name} was on {his} way home from the {place}.",
    ],
    [
        "Then {he} saw {who}. {the_who} {trouble}.",
        "On the way, {he} heard a small sound. It was {who} who {trouble}.",
        "Near the {place2}, {name} met {who} who {trouble}.",
    ],
    [
        "{Name} felt sorry for {the_who}.",
        '"Oh no," said {name}. "I have to help."',
        "{Name} stopped. {He} wanted to help.",
    ],
    ("chance", 0.5, [[
        "{fName} said, \"Come on, we will be late!\" But {name} did not go.",
        "It was almost time for dinner, but {name} stayed.",
        "It was hard, and {name} was only small.",
    ]]),
    [
        "So {name} {fix}.",
        "{Name} thought hard. Then {he} {fix}.",
        "Carefully, {name} {fix}.",
    ],
    [
        "It took a long time, but {he} did not give up.",
        "It was not easy, but {name} kept going.",
        "{Name} was very gentle.",
    ],
    [
        "At last, it was done, and {the_who} {thanks}.",
        "Then {the_who} {thanks}.",
    ],
    [
        "{Name} felt warm and {happy} inside.",
        "{Name} smiled all the way home.",
        "When {name} told {his} {parent}, {phe} gave {him} a big hug.",
    ],
    [
        '"You are a good helper," said {his} {parent}.',
        '"I am proud of you," said {his} {parent}.',
        '"Helping feels good," said {name}.',
    ],
]

ARC_STEPS["sorry"] = [
    [
        "{Name}'s friend {fname} had {a_thing}.",
        "{fName} had a new {thing}, and {name} wanted to play with it.",
        "One day, {name} saw {fname}'s {thing} on the table.",
    ],
    [
        "{fName} said, \"Please be careful with it.\"",
        "{Name} knew {he} should ask first, but {he} took it anyway.",
        "When {fname} went to the {place}, {name} picked it up.",
    ],
    [
        "{He} played with it and threw it up high.",
        "{He} ran around the room with it.",
        "{He} played with it outside near the {place2}.",
    ],
    [
        "Then, crack! The {obj} broke.",
        "Then {he} dropped it, and it broke into two pieces.",
        "Then it fell {spot} and got all dirty and broken.",
    ],
    [
        "{Name} felt {scared}. {He} hid the {obj} {spot2}.",
        "{Name} did not know what to do, so {he} hid it.",
        "{Name} put it back and did not say anything.",
    ],
    [
        "When {fname} came back, {fhe} looked for {fhis} {obj}.",
        '"Have you seen my {obj}?" asked {fname}.',
    ],
    [
        "{Name} said nothing, but {his} tummy felt funny.",
        "{Name} looked at the floor. {He} felt very bad.",
        '"No," said {name}. But {he} knew that was not true.',
    ],
    [
        "That night, {name} could not sleep. {He} told {his} {parent} everything.",
        "After a while, {name} could not keep it inside anymore.",
        "{Name} thought about how {fname} must feel.",
    ],
    [
        '"I am sorry, {fname}," {name} {said}. "I broke your {obj}, and I hid it."',
        '{Name} went to {fname}. "I broke it," {he} said. "I am so sorry."',
    ],
    [
        '{fName} was {sad}, but then {fhe} said, "Thank you for telling me the truth."',
        '{fName} was quiet for a moment. Then {fhe} said, "It\'s okay. Let\'s fix it."',
    ],
    [
        "They fixed the {obj} together with some glue and tape.",
        "{Name}'s {parent} helped them fix it, and it was almost like new.",
        "{Name} gave {fname} {his} own {treats} to say sorry, and they played together again.",
    ],
]

ARC_STEPS["garden"] = [
    ("choose", "plant looks", SEEDS),
    [
        "One {season} day, {name}'s {parent} gave {him} a tiny {plant} seed.",
        "{Name} found a little seed in {his} pocket. {His} {parent} said it was {a_plant} seed.",
        "One {time}, {name} wanted to grow {a_plant} in the garden.",
    ],
    [
        "{He} dug a small hole and put the seed in the dirt.",
        "{He} planted it in a pot by the window.",
        "{He} and {his} {parent} planted it near the fence.",
    ],
    [
        "Every day, {name} gave it water and talked to it.",
        "{He} watered it every {time} and sang it a song.",
        "Each day, {name} checked on the seed before {he} went to {activity}.",
    ],
    [
        "But nothing happened. {Name} felt {sad}.",
        "But the dirt looked the same, day after day.",
        "After three days, there was still nothing.",
    ],
    [
        '"Why is it not growing?" {name} asked.',
        '"It is taking too long!" {name} {said}.',
        '"Maybe my seed is broken," {name} {said}.',
    ],
    [
        '"Be patient," said {his} {parent}. "Seeds need time, water and sun."',
        '"Good things take time," {his} {parent} said. "Keep taking care of it."',
    ],
    [
        "So {name} waited, and kept watering it.",
        "{Name} did not give up.",
        "So {name} kept helping the seed every day, even when it was {weather}.",
    ],
    [
        "One {time}, {he} saw a tiny green sprout!",
        "Then one day, a little green leaf popped out of the dirt.",
        "After many days, a small plant came up.",
    ],
    [
        "It grew and grew, until it was {looks}.",
        "By the end of {season}, the {plant} was {looks}.",
    ],
    [
        '"Look what I grew!" {name} {said2} to {fname}.',
        "{Name} was so {happy}. {He} showed it to everyone.",
        "{Name} smiled. {His} waiting had paid off.",
    ],
]

ARC_STEPS["gift"] = [
    ("choose", "gift", GIFTS),
    [
        "Tomorrow was {fname}'s birthday, and {name} wanted to give {fhim} a present.",
        "{Name} knew that {his} friend {fname} was feeling {sad}.",
        "It was almost {fname}'s birthday.",
    ],
    [
        "But {name} had no money to buy a present.",
        "{Name} thought and thought about what to give {fhim}.",
        '"What can I give {fname}?" {name} asked {his} {parent}.',
    ],
    [
        '"The best presents are the ones you make," said {his} {parent}.',
        "Then {name} had an idea!",
        "{Name} looked around {his} room, and then {he} smiled.",
    ],
    [
        "{He} decided to make {gift}.",
        "{He} worked all {time} on {gift}.",
        "{He} got out paper, glue and crayons and made {gift}.",
    ],
    [
        "It was hard work, and {he} had to start over twice.",
        "{He} used {his} favorite colors.",
        "{His} {parent} helped a little, but {name} did most of it.",
    ],
    [
        "The next day, {name} went to the party at the {place}.",
        "The next day, {name} knocked on {fname}'s door.",
        "At the party, there were balloons and {treats} everywhere.",
    ],
    [
        "The other kids had big shiny presents, and {name} felt a little shy.",
        "{Name} held out {his} gift. \"I made it for you,\" {he} said.",
        '"Happy birthday, {fname}!" {name} {said}.',
    ],
    [
        "{fName} opened it, and {fhis} eyes got big.",
        "{fName} looked at the gift for a long time.",
    ],
    [
        '"I love it!" said {fname}. "This is my favorite present!"',
        '"You made this for me?" asked {fname}. "Thank you so much!"',
    ],
    [
        "{fName} gave {name} a big hug, and they both felt {happy}.",
        "{fName} kept the gift in a special place for a long, long time.",
    ],
]

ARC_STEPS["listen"] = [
    ("choose", "where why oops result", DANGERS),
    [
        "One {time}, {name} was playing near {where}.",
        "{Name} was a very curious {kind}, and {he} always wanted to explore.",
        "One {weather} day, {name} and {his} {parent} went to the {place}.",
    ],
    [
        '"Don\'t go near {where}," said {his} {parent}, "because {why}."',
        '{His} {parent} said, "Stay away from {where}. {Why}."',
    ],
    [
        '"Okay," said {name}, but {he} did not really listen.',
        "{Name} nodded, but {he} really wanted to see {where}.",
        "{Name} thought {his} {parent} was just being silly.",
    ],
    [
        "When no one was looking, {name} went to {where}.",
        "Soon, {name} walked right up to {where}.",
        "{Name} tiptoed away to {where}.",
    ],
    [
        "Then {he} {oops}.",
        "Oh no! {Name} {oops}.",
        "{He} got too close and {oops}.",
    ],
    [
        '"Help!" {name} {said}. "{Parent}, help!"',
        "{Name} started to cry. {He} {result}.",
        "Now {he} {result}.",
    ],
    [
        "{His} {parent} came running and helped {him}.",
        "{His} {parent} heard {him} and came right away.",
    ],
    [
        '"Are you okay?" asked {his} {parent}. {Name} nodded, feeling {sad}.',
        "{His} {parent} hugged {him} and cleaned {him} up.",
    ],
    [
        '"I am sorry," said {name}. "I should have listened to you."',
        '"Next time, I will listen," {name} promised.',
    ],
    ("chance", 0.5, [[
        '"I know you will," said {his} {parent} with a smile.',
        "{His} {parent} smiled and kissed {his} head.",
    ]]),
]

# Follows a ("choose", "moral", MORALS[arc]) step.
ENDING: list[Step] = [
    ("chance", 0.75, [[
        "{Name} learned that {moral}.",
        "That day, {name} learned that {moral}.",
        "And {name} learned an important lesson: {moral}.",
        "From then on, {name} knew that {moral}.",
        "{Name} always remembered that {moral}.",
    ]]),
    [
        "The end.",
        "And they all lived happily ever after.",
        "{Name} smiled and went to sleep, dreaming of the {place}.",
        "It was a very good day.",
        "{Name} could not wait for the next adventure.",
        "And that is how {name} had the best day ever.",
        "{He} was very {happy2}.",
    ],
]


# ----------------------------------------------------------------------------------------------
# Stories

# ARCS[name](rng, ctx) tells just the middle of a story, from a dict of slots.
ARCS = {name: functools.partial(tell, steps) for name, steps in ARC_STEPS.items()}
ARC_NAMES = sorted(ARCS)
STORY_STEPS = {name: OPENING + steps + [("choose", "moral", MORALS[name])] + ENDING
               for name, steps in ARC_STEPS.items()}


def _story_and_slots(rng: random.Random, fields: list | None = None) -> tuple[str, Slots]:
    """One story and the slots it was told from (the moral's included): the same draws as make_story.

    With a list `fields`, tell records where each sentence's slots stand (see tell)."""
    slots = Slots(caps(make_context(rng)))
    arc = choose(rng, ARC_NAMES)
    return " ".join(tell(STORY_STEPS[arc], rng, slots, fields=fields)), slots


def make_story(rng: random.Random) -> str:
    return _story_and_slots(rng)[0]


def _distinct_stories(n: int, seed: int, fields: bool = False):
    """The first n distinct (story, slots) of this seed: story k has its own generator.

    fields=True yields (story, slots, fields) instead, with tell's record of where the slots stand."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: the number of stories must be an integer >= 0, e.g. n=20000")
    seen, k = set(), 0
    while len(seen) < n:
        # Each story has its own generator, so story k never depends on how many are asked for.
        record = [] if fields else None
        story, slots = _story_and_slots(random.Random(f"picollm-stories:{seed}:{k}"), record)
        k += 1
        if story not in seen:  # rare collisions are skipped, keeping the prefix property
            seen.add(story)
            yield (story, slots, record) if fields else (story, slots)


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """The first n distinct synthetic stories for this seed (deterministic, independent of n)."""
    return [story for story, _ in _distinct_stories(n, seed)]


# ----------------------------------------------------------------------------------------------
# What each word is: labels from the tables the story's words were drawn from

# The concepts a story's slots carry, in the order of their ids (0, 1, ...).
CONCEPTS = ("person name", "pet name", "animal", "object", "colour", "place", "feeling", "treat", "parent",
            "moral")
_PET_NAMES = frozenset(PET_NAMES)
_COLORS = frozenset(COLORS)


def _slot_concepts(slots: dict) -> list[tuple[str, str]]:
    """(value, concept) for every slot of a story that holds a word of one of the CONCEPTS.

    A later pair wins where two cover the same characters, so the moral comes first: a parent named
    inside a moral ("listen to your mom") is labelled parent."""
    pairs = [(slots["moral"], "moral")] if "moral" in slots else []
    for who in ("name", "fname"):
        pairs.append((slots[who], "pet name" if slots[who] in _PET_NAMES else "person name"))
    for kind in ("kind", "fkind"):
        if slots[kind] not in ("girl", "boy"):   # an animal character: its species
            pairs.append((slots[kind], "animal"))
    pairs += [(slots["animal"], "animal"), (slots["obj"], "object"), (slots["treats"], "treat"),
              (slots["parent"], "parent")]
    if slots["obj_adj"] in _COLORS:
        pairs.append((slots["obj_adj"], "colour"))
    pairs += [(slots[k], "place") for k in ("place", "place2", "place3")]
    pairs += [(slots[k], "feeling") for k in ("happy", "happy2", "sad", "scared")]
    return pairs


def story_labels(text: str, slots: dict) -> list[tuple[int, int, str]]:
    """Character spans (start, end, concept) of the words in `text` that hold one of the story's slots.

    A slot's value is found wherever it stands as whole words (its first letter in either case, for
    a sentence that starts with it). Spans do not overlap: where two would, the later slot of
    _slot_concepts wins the characters it covers."""
    owner = [None] * len(text)
    for value, concept in _slot_concepts(slots):
        forms = {value, value[:1].upper() + value[1:]}
        pattern = r"(?<![A-Za-z])(?:" + "|".join(re.escape(f) for f in sorted(forms)) + r")(?![A-Za-z])"
        for m in re.finditer(pattern, text):
            owner[m.start():m.end()] = [concept] * (m.end() - m.start())
    spans, i = [], 0
    while i < len(text):
        if owner[i] is None:
            i += 1
            continue
        j = i
        while j < len(text) and owner[j] == owner[i]:
            j += 1
        spans.append((i, j, owner[i]))
        i = j
    return spans


def generate_labelled_stories(n: int, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """generate_stories(n, seed), each story with its labels: [(text, [(start, end, concept), ...])].

    The texts are exactly generate_stories(n, seed)'s; the labels say which characters hold a word
    the generator drew from a table for that story (a hero's or friend's name, a pet's name, an
    animal, the object, its colour, a place, a feeling, the treat, the parent, the moral; see
    CONCEPTS), so what a model's units respond to can be held against the truth."""
    return [(story, story_labels(story, slots)) for story, slots in _distinct_stories(n, seed)]


# ----------------------------------------------------------------------------------------------
# Who each word is: token roles from where the templates placed the story's slots

# The roles a story's words can take, from the slots that filled them. A slot whose value ends with
# a name or the object ({desc} "a little girl named Lily", {thing} "red ball") gives that tail.
ROLE_FIELDS = {
    "hero name": ("name", "Name"),
    "hero pronoun": ("he", "He", "him", "his", "His", "himself"),
    "friend name": ("fname", "fName"),
    "friend pronoun": ("fhe", "fHe", "fhim", "fhis", "fHis"),
    "parent pronoun": ("phe", "phim", "phis"),
    "object": ("obj",),
}
_TAILS = {"desc": ("hero name", "name"), "fdesc": ("friend name", "fname"), "thing": ("object", "obj"),
          "a_thing": ("object", "obj")}
_ROLE_OF = {field: role for role, fields in ROLE_FIELDS.items() for field in fields}
# Slots that stand as a sentence's subject when a verb follows them ("{He} smiled", "{name} was").
SUBJECT_FIELDS = frozenset({"he", "He", "fhe", "fHe", "phe", "name", "Name", "fname", "fName"})
_NOT_VERBS = frozenset({"a", "all", "also", "always", "and", "really"})
ROLES = (*ROLE_FIELDS, "subject", "verb")


def _sentence_roles(sentence: str, spans: list[tuple[int, int, str]], slots: dict) -> list[tuple[int, int, str]]:
    """(start, end, role) in one sentence, from where its template placed the slots."""
    roles = []
    for start, end, field in spans:
        if field in _ROLE_OF:
            roles.append((start, end, _ROLE_OF[field]))
        elif field in _TAILS:
            role, slot = _TAILS[field]
            roles.append((end - len(slots[slot]), end, role))
        elif field == "finder":   # the one who found the lost thing: the hero or the friend
            roles.append((start, end, "hero name" if slots["finder"] == slots["name"] else "friend name"))
        if field in SUBJECT_FIELDS:
            m = re.match(r" ([a-z]+)\b", sentence[end:])
            if m and m.group(1) not in _NOT_VERBS:   # "{He} smiled": a subject, then its verb
                roles.append((start, end, "subject"))
                roles.append((end + 1, end + 1 + len(m.group(1)), "verb"))
    return roles


def generate_role_stories(n: int, seed: int = 0) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """generate_stories(n, seed), each with the roles of its words: [(text, [(start, end, role), ...])].

    The texts are exactly generate_stories(n, seed)'s. A role (see ROLES) says who a word is, from
    the slot the story's template put there: the hero's or the friend's name and pronouns, the
    parent's pronouns, the object, and for a sentence whose subject slot is followed by a verb,
    that subject and the verb (the verb's subject is the "subject" span that ends one character
    before it). Spans are sorted by start; a subject is also a name or a pronoun. Only words the
    templates place directly are labelled: a pronoun inside a longer slot (an activity, "play with
    his ball") is not."""
    out = []
    for story, slots, record in _distinct_stories(n, seed, fields=True):
        roles, offset = [], 0
        for sentence, spans in record:   # the story is its sentences joined by single spaces
            roles += [(offset + a, offset + b, r) for a, b, r in _sentence_roles(sentence, spans, slots)]
            offset += len(sentence) + 1
        out.append((story, sorted(roles)))
    return out


if __name__ == "__main__":
    for s in generate_stories(3):
        print(s, end="\n\n")
