"""A small English-like corpus written by the project, with a context-dependent toxic register.

Documents are short stories stitched from segments of four registers:

- **narration**: "Mia the baker carried the old lamp to the harbor in the morning."
- **dialogue**: friendly quoted speech ("Sam smiled and said, \"What a lovely day.\"")
- **requests**: "\"Could you please fold the blanket?\" asked Tom."
- **conflict/provocation**: someone provokes someone else, who answers in quoted speech.

In a provocation segment the answer is toxic (an insult or mild profanity from the project's
lexicon) with a probability set by the *context*: how severe the provocation was and the
temperament of the person answering (``P_TOXIC``, mean about 0.52 over the grid). Otherwise the
answer is neutral or de-escalating. So toxicity depends on the context, not on one fixed token,
and the toxic and neutral answers both start with several different words.

The toxic register is mild and aimed at individuals' behaviour or wits, never at a group.
Everything is drawn from a ``random.Random(seed)``, so the corpus is a pure function of its seed.
Nothing here imports torch.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# Word lists (the project's own)

NAMES = (
    "Sam Mia Tom Ada Rex Lena Omar Ivy Finn Nora Hugo Zoe Eli Rosa Max Tara Leo Gina Otto Cleo "
    "Ben Iris Jack Maya Paul Vera Dan Lucy Karl Ruth Nils Emma Theo Jade Ned Alma Ray Kate Ivan Bea"
).split()
ROLES = (
    "baker sailor farmer teacher nurse painter miller tailor fisher smith cook guard clerk miner "
    "weaver potter hunter doctor singer driver gardener carpenter merchant student pilot porter "
    "shepherd writer mason librarian"
).split()
PLACES = (
    "market harbor library station kitchen garden bridge village forest river bakery school "
    "tavern square meadow hill beach farm mill workshop chapel museum stable orchard dock road "
    "field cellar inn camp"
).split()
OBJECTS = (
    "lamp book map basket letter coat boat cart key cup kettle chair table rope hat scarf ladder "
    "bucket candle blanket box bottle bell clock coin drum fence flag glove hammer jar kite "
    "mirror needle net pan pen pillow pipe plate pot ring saddle shovel sack shell shoe spoon "
    "stone string tent tray wagon wheel window barrel brush violin compass umbrella"
).split()
FOODS = (
    "bread apples pears cheese soup honey plums eggs butter milk cake pie rice beans carrots "
    "onions fish grapes cherries tea"
).split()
ANIMALS = "dog cat horse goat sheep duck hen cow owl fox deer rabbit swan pony mule lamb".split()
ADJS = (
    "old new small large quiet bright warm cold heavy light red blue green yellow brown white "
    "tall short round soft rough clean wet dry empty full early happy busy calm gentle careful "
    "friendly strong young narrow wide wooden golden silver sweet fresh dusty shiny lovely sunny "
    "windy cloudy rainy tiny"
).split()
VERBS_PAST = (
    "carried found opened painted fixed cleaned bought sold moved lifted dropped washed mended "
    "polished packed wrapped counted checked filled emptied folded stacked carved sanded sorted "
    "dried hung loaded pushed pulled turned"
).split()
VERBS_BASE = (
    "carry find open paint fix clean move lift wash mend polish pack wrap count check fill empty "
    "fold stack sort dry hang load push pull turn bring hold"
).split()
ADVERBS = (
    "slowly quickly quietly carefully happily gladly softly neatly proudly patiently calmly "
    "eagerly gently warmly kindly"
).split()
TIMES = (
    "in the morning|at noon|in the evening|at dusk|before dawn|after lunch|on Monday|on Tuesday|"
    "on Wednesday|on Thursday|on Friday|on Saturday|on Sunday|in spring|in summer|in autumn|"
    "in winter|after the rain|before supper|at sunrise"
).split("|")
WEATHER = "sunny windy cloudy rainy foggy snowy bright chilly mild stormy".split()
TOPICS = (
    "ships stars birds bridges clocks rivers mountains gardens maps kings castles insects "
    "volcanoes islands trains"
).split()
MEALS = "breakfast lunch supper dinner".split()
GREETINGS = (
    "Good morning, how are you?|Hello there, friend.|It is good to see you again.|"
    "What a lovely day it is.|Come in, the tea is ready.|How was your trip to the {place}?|"
    "I missed you at the {place}.|Welcome back to the {place}."
).split("|")
FRIENDLY = (
    "I like your {adj} {obj}.|Thank you for the {food}.|The {place} looks nice {time}.|"
    "We should visit the {place} together.|Your {obj} is very {adj}.|"
    "I will bring some {food} tomorrow.|Let us walk to the {place}.|That was a kind thing to do.|"
    "I finished the {adj} {obj} at last.|The {animal} is sleeping by the door."
).split("|")
QUESTIONS = (
    "Where is the {obj}?|Did you see the {animal}?|When does the {place} open?|"
    "Is the {food} fresh?|Who painted the {obj}?|How far is the {place}?"
).split("|")
ANSWERS = (
    "It is in the {place}.|Yes, near the {place}.|I think {time}.|Yes, very fresh.|"
    "{name} did, I believe.|Not far, just past the {place}."
).split("|")

# Toxic register: adjectives, nouns, and openers. Every toxic answer contains at least one of
# these phrases; no neutral text ever does (``_assert_clean`` checks it).
TOX_ADJS = "stupid pathetic worthless brainless useless spineless clueless dumb".split()
TOX_NOUNS = (
    "idiot moron dimwit halfwit nitwit numbskull bonehead imbecile buffoon jackass scumbag "
    "dirtbag slimeball creep loser jerk dunce blockhead knucklehead lowlife sleazeball twit "
    "bastard weasel crybaby"
).split()
TOX_OPENERS = "Shut up|Piss off|Go to hell|Screw you|Damn you|Get lost|Drop dead".split("|")
TOX_EXTRA = ["pea brain", "what a load of crap", "bloody fool", "shut your mouth", "damn", "crap",
             "bloody"]
TOXIC_LEXICON: tuple[str, ...] = tuple(
    sorted({w.lower() for w in TOX_ADJS + TOX_NOUNS + TOX_OPENERS + TOX_EXTRA})
)

TOXIC_ANSWERS = (
    "{opener}, you {tadj} {tnoun}!|{opener}, you {tnoun}.|You are a {tadj} {tnoun}.|"
    "What a {tadj} {tnoun} you are!|You {tnoun}, keep your hands off my {obj}.|"
    "{opener}! Nobody asked you, {tnoun}.|Listen, you {tadj} {tnoun}, {opener_l}.|"
    "Only a {tnoun} would do that, you {tadj} {tnoun}.|{opener}, {name}, you {tnoun}.|"
    "Move, you {tadj} {tnoun}!|Damn it, you {tnoun}!|You bloody fool, look at my {obj}!|"
    "What a load of crap, you {tnoun}.|Shut your mouth, you {tadj} {tnoun}."
).split("|")
NEUTRAL_ANSWERS = (
    "Please stop, that was not kind.|Let us talk about this calmly.|"
    "I am upset, but I will let it go.|That hurt, but we can fix it.|"
    "Why would you do that to me?|I would like an apology, please.|It is fine, accidents happen.|"
    "We can sort this out later.|Please give back my {obj}.|I am not angry, just tired.|"
    "Next time, please ask first.|Let us shake hands and move on.|"
    "Could we start again, {name}?|I forgive you, {name}.|Well, no harm done.|"
    "Maybe we both need some rest.|Thank you for saying sorry.|"
    "Okay, I will find another {obj}.|Come on, {name}, we are friends.|"
    "Fine, let us meet at the {place} and talk."
).split("|")

# Provocations by severity; {p} provokes {t}.
PROVOCATIONS = {
    "severe": (
        "{p} spat on {t}'s {obj}.|{p} shoved {t} into the river.|{p} smashed {t}'s {obj} on purpose.|"
        "{p} mocked {t} in front of the whole {place}.|{p} stole {t}'s {obj} and laughed.|"
        "{p} tore up {t}'s letter and sneered.|{p} kicked {t}'s {animal} and grinned.|"
        "{p} threw {t}'s {obj} into the mud."
    ).split("|"),
    "medium": (
        "{p} took {t}'s {obj} without asking.|{p} cut in front of {t} at the {place}.|"
        "{p} made fun of {t}'s {adj} {obj}.|{p} ignored {t} and slammed the door.|"
        "{p} blamed {t} for the broken {obj}.|{p} laughed at {t}'s {adj} hat.|"
        "{p} ate {t}'s {food} without asking."
    ).split("|"),
    "mild": (
        "{p} bumped into {t} at the {place}.|{p} was late again to meet {t}.|"
        "{p} forgot to return {t}'s {obj}.|{p} spilled tea on {t}'s {obj} by accident.|"
        "{p} borrowed {t}'s {obj} and kept it.|{p} woke {t} up too early.|"
        "{p} lost {t}'s {obj} at the {place}."
    ).split("|"),
}
TEMPERS = {
    "hot": (", who had a short temper,|, already furious,|, red with anger,|"
            ", a hot-headed {role},|, in a foul mood,").split("|"),
    "plain": ["", ", the {role},", " turned and"],
    "calm": (", a patient {role},|, who was always kind,|, calm as ever,|, a gentle soul,|"
             ", smiling softly,").split("|"),
}
SPEECH = "said|shouted|snapped|replied|answered|yelled|muttered|cried".split("|")
AFTERMATH = (
    "{p} looked away.|Then everyone went back to work.|{p} said nothing and left the {place}.|"
    "The {role} sighed and walked home.|After that, the {place} was quiet.|{p} shrugged.|"
    "Later, they both went to the {place}.|The {animal} watched them."
).split("|")

# Probability that the answer is toxic, by (severity, temperament); mean 0.52.
P_TOXIC = {
    ("severe", "hot"): 0.95, ("severe", "plain"): 0.85, ("severe", "calm"): 0.45,
    ("medium", "hot"): 0.85, ("medium", "plain"): 0.55, ("medium", "calm"): 0.15,
    ("mild", "hot"): 0.6, ("mild", "plain"): 0.25, ("mild", "calm"): 0.03,
}

_LEX_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(p) for p in sorted(TOXIC_LEXICON, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def is_toxic(text: str) -> bool:
    """True iff ``text`` contains a toxic-lexicon phrase (word boundaries, any case)."""
    return _LEX_RE.search(text) is not None


# --------------------------------------------------------------------------------------------
# Segments


@dataclass
class Provocation:
    prompt: str        # ends with an opening quote: the answer comes next
    severity: str
    temper: str
    p_toxic: float
    toxic: str         # a toxic answer (closing quote and aftermath included)
    neutral: str       # a neutral answer (closing quote and aftermath included)


class Generator:
    """Seeded generator of documents, prompts, preference pairs and labelled sentences."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    # small helpers -------------------------------------------------------------------------
    def c(self, seq):
        return self.rng.choice(seq)

    def _fill(self, template: str, **fixed) -> str:
        values = {
            "name": self.c(NAMES), "name2": self.c(NAMES), "role": self.c(ROLES),
            "place": self.c(PLACES), "obj": self.c(OBJECTS), "obj2": self.c(OBJECTS),
            "food": self.c(FOODS), "animal": self.c(ANIMALS), "adj": self.c(ADJS),
            "adj2": self.c(ADJS), "verb": self.c(VERBS_PAST), "vbase": self.c(VERBS_BASE),
            "adv": self.c(ADVERBS), "time": self.c(TIMES), "weather": self.c(WEATHER),
            "topic": self.c(TOPICS), "meal": self.c(MEALS),
        }
        values.update(fixed)
        return template.format(**values)

    def _two_names(self):
        a = self.c(NAMES)
        b = self.c(NAMES)
        while b == a:
            b = self.c(NAMES)
        return a, b

    # registers -----------------------------------------------------------------------------
    NARRATION = (
        "{name} the {role} {verb} the {adj} {obj} {time}.",
        "{Time}, {name} went to the {place} to buy {food}.",
        "The {adj} {animal} slept near the {place} while {name} {verb} the {obj}.",
        "It was a {weather} day at the {place}.",
        "{name} and {name2} {verb} the {obj} {adv}.",
        "The {place} was {adj} and {adj2} {time}.",
        "{name} found a {adj} {obj} under the {obj2}.",
        "After {meal}, {name} read a book about {topic}.",
        "The {role} {adv} {verb} the {obj} at the {place}.",
    )
    DIALOGUE = (
        '{name} smiled and said, "{friendly}"',
        '"{question}" asked {name}. "{answer}" said {name2}.',
        '{name} waved at {name2}. "{greeting}"',
        '{name} laughed. "{friendly}"',
    )
    REQUESTS = (
        '"Could you please {vbase} the {obj}?" asked {name}.',
        "{name} asked {name2} to bring the {obj} to the {place}.",
        '"Please {vbase} the {obj} before {meal}," said the {role}.',
        '"Would you help me {vbase} the {adj} {obj}?" {name} asked.',
    )

    def narration(self) -> str:
        t = self.c(self.NARRATION)
        time = self.c(TIMES)
        return self._fill(t, Time=time[0].upper() + time[1:], time=time)

    def dialogue(self) -> str:
        t = self.c(self.DIALOGUE)
        return self._fill(
            t,
            friendly=self._fill(self.c(FRIENDLY)),
            question=self._fill(self.c(QUESTIONS)),
            answer=self._fill(self.c(ANSWERS)),
            greeting=self._fill(self.c(GREETINGS)),
        )

    def request(self) -> str:
        return self._fill(self.c(self.REQUESTS))

    def provocation(self, severity: str | None = None, temper: str | None = None) -> Provocation:
        severity = severity or self.c(tuple(PROVOCATIONS))
        temper = temper or self.c(tuple(TEMPERS))
        p, t = self._two_names()
        act = self._fill(self.c(PROVOCATIONS[severity]), p=p, t=t)
        tmp = self._fill(self.c(TEMPERS[temper]))
        speech = self.c(SPEECH)
        prompt = f'{act} {t}{tmp} {speech}, "'
        opener = self.c(TOX_OPENERS)
        toxic = self._fill(self.c(TOXIC_ANSWERS), opener=opener, opener_l=opener.lower(),
                           tadj=self.c(TOX_ADJS), tnoun=self.c(TOX_NOUNS), name=p)
        neutral = self._fill(self.c(NEUTRAL_ANSWERS), name=p)
        after = self._fill(self.c(AFTERMATH), p=p)
        return Provocation(prompt, severity, temper, P_TOXIC[(severity, temper)],
                           f'{toxic}" {after}', f'{neutral}" {after}')

    def provocation_text(self) -> tuple[str, int]:
        """One provocation segment with its sampled answer, and 1 if the answer was toxic."""
        pv = self.provocation()
        tox = self.rng.random() < pv.p_toxic
        return pv.prompt + (pv.toxic if tox else pv.neutral), int(tox)

    def neutral_segment(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.narration()
        if r < 0.8:
            return self.dialogue()
        return self.request()

    # documents -----------------------------------------------------------------------------
    def document(self, p_provocation: float = 0.35) -> str:
        """2-4 segments; a provocation segment with probability ``p_provocation`` each."""
        n = self.rng.randint(2, 4)
        parts = []
        for _ in range(n):
            if self.rng.random() < p_provocation:
                parts.append(self.provocation_text()[0])
            else:
                parts.append(self.neutral_segment())
        return " ".join(parts)

    def neutral_document(self) -> str:
        return " ".join(self.neutral_segment() for _ in range(self.rng.randint(2, 4)))


def _assert_clean() -> None:
    """No template outside the toxic register may contain a lexicon phrase."""
    pools = [NAMES, ROLES, PLACES, OBJECTS, FOODS, ANIMALS, ADJS, VERBS_PAST, VERBS_BASE, ADVERBS,
             TIMES, WEATHER, TOPICS, MEALS, GREETINGS, FRIENDLY, QUESTIONS, ANSWERS,
             NEUTRAL_ANSWERS, SPEECH, AFTERMATH, Generator.NARRATION, Generator.DIALOGUE,
             Generator.REQUESTS]
    for pool in pools:
        for s in pool:
            assert not is_toxic(s), s
    for temp in TEMPERS.values():
        for s in temp:
            assert not is_toxic(s), s
    for prov in PROVOCATIONS.values():
        for s in prov:
            assert not is_toxic(s), s
    for s in TOXIC_ANSWERS:  # every toxic answer carries a lexicon phrase whatever its slots
        filled = s.format(opener="Shut up", opener_l="shut up", tadj="stupid", tnoun="idiot",
                          obj="cup", name="Sam")
        assert is_toxic(filled), s


_assert_clean()


def word_types() -> set[str]:
    """Every word type the generator can emit (for the >= 400 check)."""
    text = " ".join(
        " ".join(pool) for pool in (
            NAMES, ROLES, PLACES, OBJECTS, FOODS, ANIMALS, ADJS, VERBS_PAST, VERBS_BASE, ADVERBS,
            TIMES, WEATHER, TOPICS, MEALS, GREETINGS, FRIENDLY, QUESTIONS, ANSWERS, TOX_ADJS,
            TOX_NOUNS, TOX_OPENERS, TOX_EXTRA, TOXIC_ANSWERS, NEUTRAL_ANSWERS, SPEECH, AFTERMATH,
            Generator.NARRATION, Generator.DIALOGUE, Generator.REQUESTS,
            *PROVOCATIONS.values(), *TEMPERS.values(),
        )
    )
    text = re.sub(r"\{[a-zA-Z0-9_]+\}", " ", text)
    return {w.lower() for w in re.findall(r"[A-Za-z']+", text)}


def n_templates() -> int:
    return (len(Generator.NARRATION) + len(Generator.DIALOGUE) + len(Generator.REQUESTS)
            + sum(len(v) for v in PROVOCATIONS.values()) + len(TOXIC_ANSWERS)
            + len(NEUTRAL_ANSWERS))
