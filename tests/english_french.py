"""English-French sentence pairs in the Tatoeba style, generated offline from a small grammar.

Written for the tests and measurements of the TSV pipeline (no download): everyday sentences
with names, questions, negations, elision (``J'ai``, ``n'est``), French spacing (U+202F before
``?`` and ``!``, U+00A0 inside ``« »``), quotes and numbers (num2words). ``pairs(n, seed)``
gives ``n`` distinct pairs in a seeded order; ``write_tsv(path, n, seed)`` writes them in the
Anki format (``English<TAB>French<TAB>attribution``).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

NNBSP, NBSP = "\u202f", "\u00a0"

# subject: English, French, person index (je tu il nous vous ils), gender, English 3rd-sg verb
SUBJECTS = [
    ("I", "je", 0, "m"), ("he", "il", 2, "m"), ("she", "elle", 2, "f"), ("we", "nous", 3, "m"),
    ("you", "vous", 4, "m"), ("they", "ils", 5, "m"), ("Tom", "Tom", 2, "m"), ("Mary", "Mary", 2, "f"),
    ("John", "John", 2, "m"), ("Alice", "Alice", 2, "f"), ("my brother", "mon frère", 2, "m"),
    ("my sister", "ma sœur", 2, "f"), ("the teacher", "le professeur", 2, "m"),
    ("my parents", "mes parents", 5, "m"), ("the children", "les enfants", 5, "m"),
    ("Tom and Mary", "Tom et Mary", 5, "m"),
]  # fmt: skip
PRONOUN = {2: {"m": "il", "f": "elle"}, 5: {"m": "ils", "f": "elles"}}

BE_EN = ["am", "are", "is", "are", "are", "are"]
BE_FR = ["suis", "es", "est", "sommes", "êtes", "sont"]

# adjective: English, French m / f / m pl / f pl
ADJECTIVES = [
    ("ill", "malade", "malade", "malades", "malades"),
    ("tired", "fatigué", "fatiguée", "fatigués", "fatiguées"),
    ("happy", "heureux", "heureuse", "heureux", "heureuses"),
    ("ready", "prêt", "prête", "prêts", "prêtes"),
    ("busy", "occupé", "occupée", "occupés", "occupées"),
    ("late", "en retard", "en retard", "en retard", "en retard"),
    ("sad", "triste", "triste", "tristes", "tristes"),
    ("angry", "en colère", "en colère", "en colère", "en colère"),
    ("rich", "riche", "riche", "riches", "riches"),
    ("tall", "grand", "grande", "grands", "grandes"),
    ("young", "jeune", "jeune", "jeunes", "jeunes"),
    ("hungry", None, None, None, None),  # avoir faim
    ("thirsty", None, None, None, None),  # avoir soif
    ("cold", None, None, None, None),  # avoir froid
]
AVOIR_NOUN = {"hungry": "faim", "thirsty": "soif", "cold": "froid"}

# verb: English base, English 3sg, French forms (je tu il nous vous ils), object kinds
VERBS = [
    ("like", "likes", ["aime", "aimes", "aime", "aimons", "aimez", "aiment"], "generic"),
    ("want", "wants", ["veux", "veux", "veut", "voulons", "voulez", "veulent"], "thing"),
    ("have", "has", ["ai", "as", "a", "avons", "avez", "ont"], "thing"),
    ("see", "sees", ["vois", "vois", "voit", "voyons", "voyez", "voient"], "thing"),
    ("eat", "eats", ["mange", "manges", "mange", "mangeons", "mangez", "mangent"], "food"),
    ("read", "reads", ["lis", "lis", "lit", "lisons", "lisez", "lisent"], "read"),
    ("buy", "buys", ["achète", "achètes", "achète", "achetons", "achetez", "achètent"], "thing"),
    (
        "know",
        "knows",
        ["connais", "connais", "connaît", "connaissons", "connaissez", "connaissent"],
        "person",
    ),
]

# noun: English singular, plural, French singular, plural, gender, kinds
NOUNS = [
    ("apple", "apples", "pomme", "pommes", "f", {"food", "thing"}),
    ("cake", "cakes", "gâteau", "gâteaux", "m", {"food", "thing"}),
    ("orange", "oranges", "orange", "oranges", "f", {"food", "thing"}),
    ("sandwich", "sandwiches", "sandwich", "sandwichs", "m", {"food", "thing"}),
    ("book", "books", "livre", "livres", "m", {"read", "thing"}),
    ("newspaper", "newspapers", "journal", "journaux", "m", {"read", "thing"}),
    ("letter", "letters", "lettre", "lettres", "f", {"read", "thing"}),
    ("car", "cars", "voiture", "voitures", "f", {"thing"}),
    ("dog", "dogs", "chien", "chiens", "m", {"thing"}),
    ("cat", "cats", "chat", "chats", "m", {"thing"}),
    ("house", "houses", "maison", "maisons", "f", {"thing"}),
    ("bike", "bikes", "vélo", "vélos", "m", {"thing"}),
    ("umbrella", "umbrellas", "parapluie", "parapluies", "m", {"thing"}),
    ("ticket", "tickets", "billet", "billets", "m", {"thing"}),
    ("key", "keys", "clé", "clés", "f", {"thing"}),
    ("computer", "computers", "ordinateur", "ordinateurs", "m", {"thing"}),
]
GENERIC = [("music", "la musique"), ("coffee", "le café"), ("tea", "le thé"), ("football", "le football"),
           ("chocolate", "le chocolat"), ("cats", "les chats"), ("dogs", "les chiens"), ("apples", "les pommes"),
           ("books", "les livres"), ("French", "le français"), ("winter", "l'hiver"), ("summer", "l'été")]  # fmt: skip
PEOPLE = [("Tom", "Tom"), ("Mary", "Mary"), ("John", "John"), ("Alice", "Alice"), ("her", "la"),
          ("him", "le"), ("my teacher", "mon professeur"), ("your sister", "votre sœur")]  # fmt: skip

GO_FR = ["vais", "vas", "va", "allons", "allez", "vont"]
PLACES = [("Paris", "à Paris"), ("Boston", "à Boston"), ("London", "à Londres"), ("the station", "à la gare"),
          ("school", "à l'école"), ("the beach", "à la plage"), ("the market", "au marché"),
          ("the cinema", "au cinéma"), ("the hospital", "à l'hôpital"), ("the library", "à la bibliothèque"),
          ("work", "au travail"), ("the park", "au parc")]  # fmt: skip
TIMES = [("tomorrow", "demain"), ("today", "aujourd'hui"), ("now", "maintenant"), ("tonight", "ce soir"),
         ("on Monday", "lundi"), ("this morning", "ce matin"), ("next week", "la semaine prochaine")]  # fmt: skip

CAN_FR = ["peux", "peux", "peut", "pouvons", "pouvez", "peuvent"]
WANT_FR = VERBS[1][2]
INFINITIVES = [("swim", "nager"), ("dance", "danser"), ("sleep", "dormir"), ("leave", "partir"),
               ("stay", "rester"), ("work", "travailler"), ("sing", "chanter"), ("drive", "conduire"),
               ("cook", "cuisiner"), ("help", "aider"), ("eat", "manger"), ("read", "lire"),
               ("go home", "rentrer à la maison"), ("speak French", "parler français")]  # fmt: skip

PHRASES = [
    ("Hello!", "Bonjour\u202f!"), ("Thank you.", "Merci."), ("Thank you very much.", "Merci beaucoup."),
    ("Good night.", "Bonne nuit."), ("Help!", "À l'aide\u202f!"), ("Wait!", "Attendez\u202f!"),
    ("Come in.", "Entrez."), ("Sit down.", "Asseyez-vous."), ("I don't know.", "Je ne sais pas."),
    ("I understand.", "Je comprends."), ("I don't understand.", "Je ne comprends pas."),
    ("What's your name?", "Comment vous appelez-vous\u202f?"), ("Where is the station?", "Où est la gare\u202f?"),
    ("How are you?", "Comment allez-vous\u202f?"), ("What time is it?", "Quelle heure est-il\u202f?"),
    ("It's raining.", "Il pleut."), ("It's cold.", "Il fait froid."), ("It's hot.", "Il fait chaud."),
    ("Let's go!", "Allons-y\u202f!"), ("Be careful!", "Faites attention\u202f!"), ("I'm sorry.", "Je suis désolé."),
    ("Excuse me.", "Excusez-moi."), ("See you tomorrow.", "À demain."), ("Good luck!", "Bonne chance\u202f!"),
    ("Happy birthday!", "Joyeux anniversaire\u202f!"), ("Welcome!", "Bienvenue\u202f!"), ("Of course.", "Bien sûr."),
    ("Why not?", "Pourquoi pas\u202f?"), ("Who are you?", "Qui êtes-vous\u202f?"), ("Where are you?", "Où êtes-vous\u202f?"),
    ("What is this?", "Qu'est-ce que c'est\u202f?"), ("I love you.", "Je t'aime."), ("Call me.", "Appelle-moi."),
    ("Listen to me.", "Écoutez-moi."), ("Don't move!", "Ne bougez pas\u202f!"), ("Stop!", "Arrêtez\u202f!"),
    ("It's 3.50 euros.", "C'est 3,50 euros."), ("Follow me.", "Suivez-moi."), ("Good morning.", "Bonjour."),
    ("Nobody knows.", "Personne ne sait."), ("That's enough!", "Ça suffit\u202f!"), ("Really?", "Vraiment\u202f?"),
]  # fmt: skip

_VOWEL = "aeiouyhâàéèêîïôûAEIOUYHÂÀÉÈÊÎÏÔÛ"
_ELIDE = re.compile(rf"\b(je|me|te|le|la|ne|de|que)\s+(?=[{_VOWEL}])", re.IGNORECASE)


def _elide(text: str) -> str:
    return _ELIDE.sub(lambda m: m.group(1)[:-1] + "'", text)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fr_end(mark: str, rng: random.Random) -> str:
    return (NNBSP if rng.random() < 0.85 else " ") + mark if mark in "?!" else mark


def _third(person: int) -> bool:
    return person == 2


def _be_en(subj: str, person: int, negative: bool, rng: random.Random) -> str:
    be = "am" if subj == "I" else BE_EN[person]
    if rng.random() < 0.5:  # contracted: I'm, he's, isn't, aren't
        if negative:
            return f"{subj}'m not" if subj == "I" else f"{subj} {be}n't"
        short = {"am": "'m", "is": "'s", "are": "'re"}[be]
        return (
            f"{subj}{short}"
            if subj in ("I", "he", "she", "we", "you", "they", "Tom", "Mary")
            else f"{subj} {be}"
        )
    return f"{subj} {be} not" if negative else f"{subj} {be}"


def _adjective(rng: random.Random) -> tuple[str, str]:
    subj, fr_subj, person, gender = rng.choice(SUBJECTS)
    adj = rng.choice(ADJECTIVES)
    form = rng.choice(["plain", "negative", "question"])
    if adj[1] is None:  # avoir faim / soif / froid
        noun = AVOIR_NOUN[adj[0]]
        avoir = VERBS[2][2][person]
        if form == "question":
            en = f"{'Am' if subj == 'I' else BE_EN[person].capitalize()} {subj} {adj[0]}?"
            fr = f"Est-ce que {fr_subj} {avoir} {noun}"
        elif form == "negative":
            en = f"{_be_en(subj, person, True, rng)} {adj[0]}."
            fr = f"{fr_subj} ne {avoir} pas {noun}"
        else:
            en = f"{_be_en(subj, person, False, rng)} {adj[0]}."
            fr = f"{fr_subj} {avoir} {noun}"
    else:
        plural = person in (3, 4, 5)
        fr_adj = adj[1 + 2 * plural + (gender == "f")]
        be = BE_FR[person]
        if form == "question":
            en = f"{'Am' if subj == 'I' else BE_EN[person].capitalize()} {subj} {adj[0]}?"
            if fr_subj in ("je", "il", "elle", "nous", "vous", "ils"):
                fr = f"{be}-{fr_subj} {fr_adj}"
            else:
                fr = f"{fr_subj} {be}-{PRONOUN[person][gender]} {fr_adj}"
        elif form == "negative":
            en = f"{_be_en(subj, person, True, rng)} {adj[0]}."
            fr = f"{fr_subj} ne {be} pas {fr_adj}"
        else:
            en = f"{_be_en(subj, person, False, rng)} {adj[0]}."
            fr = f"{fr_subj} {be} {fr_adj}"
    mark = "?" if form == "question" else "."
    return _cap(en), _cap(_elide(fr)) + _fr_end(mark, rng)


def _object(kind: str, negative: bool, rng: random.Random) -> tuple[str, str]:
    if kind == "generic":
        return rng.choice(GENERIC)
    if kind == "person":
        return rng.choice(PEOPLE)
    noun = rng.choice([n for n in NOUNS if kind in n[5]])
    en_sg, en_pl, fr_sg, fr_pl, gender, _ = noun
    det = rng.choice(["a", "the", "this", "my", "your", "number"] if not negative else ["a", "the", "my"])
    vowel = fr_sg[0] in _VOWEL
    if det == "a":
        article = "an" if en_sg[0] in "aeiou" else "a"
        return f"{article} {en_sg}", (
            f"de {fr_sg}" if negative else f"{'une' if gender == 'f' else 'un'} {fr_sg}"
        )
    if det == "the":
        return f"the {en_sg}", f"{'la' if gender == 'f' else 'le'} {fr_sg}"
    if det == "this":
        fr_det = "cette" if gender == "f" else ("cet" if vowel else "ce")
        return f"this {en_sg}", f"{fr_det} {fr_sg}"
    if det == "my":
        return f"my {en_sg}", f"{'ma' if gender == 'f' and not vowel else 'mon'} {fr_sg}"
    if det == "your":
        return f"your {en_sg}", f"votre {fr_sg}"
    from num2words import num2words

    n = rng.randint(2, 12)
    return f"{num2words(n, lang='en')} {en_pl}", f"{num2words(n, lang='fr')} {fr_pl}"


def _verb(rng: random.Random) -> tuple[str, str]:
    subj, fr_subj, person, _ = rng.choice(SUBJECTS)
    base, third, fr_forms, kind = rng.choice(VERBS)
    form = rng.choice(["plain", "negative", "question"])
    en_obj, fr_obj = _object(kind, form == "negative", rng)
    fr_verb = fr_forms[person]
    if kind == "person" and fr_obj in ("la", "le"):  # object pronoun before the verb
        pre, fr_obj = f"{fr_obj} ", ""
    else:
        pre = ""
    tail = f" {fr_obj}" if fr_obj else ""
    if form == "question":
        en = f"{'Does' if _third(person) else 'Do'} {subj} {base} {en_obj}?"
        fr = f"Est-ce que {fr_subj} {pre}{fr_verb}{tail}"
    elif form == "negative":
        aux = (
            ("doesn't" if _third(person) else "don't")
            if rng.random() < 0.7
            else ("does not" if _third(person) else "do not")
        )
        en = f"{subj} {aux} {base} {en_obj}."
        fr = f"{fr_subj} ne {pre}{fr_verb} pas{tail}"
    else:
        en = f"{subj} {third if _third(person) else base} {en_obj}."
        fr = f"{fr_subj} {pre}{fr_verb}{tail}"
    return _cap(en), _cap(_elide(fr)) + _fr_end("?" if form == "question" else ".", rng)


def _go(rng: random.Random) -> tuple[str, str]:
    subj, fr_subj, person, _ = rng.choice(SUBJECTS)
    place, fr_place = rng.choice(PLACES)
    when, fr_when = rng.choice(TIMES)
    if rng.random() < 0.25:
        en = f"{'Is' if _third(person) else ('Am' if subj == 'I' else 'Are')} {subj} going to {place} {when}?"
        fr = f"Est-ce que {fr_subj} {GO_FR[person]} {fr_place} {fr_when}"
        return en, _cap(_elide(fr)) + _fr_end("?", rng)
    en = f"{_be_en(subj, person, False, rng)} going to {place} {when}."
    return _cap(en), _cap(_elide(f"{fr_subj} {GO_FR[person]} {fr_place} {fr_when}")) + "."


def _infinitive(rng: random.Random) -> tuple[str, str]:
    subj, fr_subj, person, _ = rng.choice(SUBJECTS)
    verb, fr_inf = rng.choice(INFINITIVES)
    form = rng.choice(["want", "can", "cannot", "want?"])
    if form == "want":
        return _cap(f"{subj} {'wants' if _third(person) else 'want'} to {verb}."), _cap(
            _elide(f"{fr_subj} {WANT_FR[person]} {fr_inf}.")
        )
    if form == "want?":
        en = f"{'Does' if _third(person) else 'Do'} {subj} want to {verb}?"
        return en, _cap(_elide(f"Est-ce que {fr_subj} {WANT_FR[person]} {fr_inf}")) + _fr_end("?", rng)
    if form == "can":
        return _cap(f"{subj} can {verb}."), _cap(_elide(f"{fr_subj} {CAN_FR[person]} {fr_inf}."))
    return _cap(f"{subj} can't {verb}."), _cap(_elide(f"{fr_subj} ne {CAN_FR[person]} pas {fr_inf}."))


def _quote(rng: random.Random) -> tuple[str, str]:
    who, fr_who = rng.choice([("Tom", "Tom"), ("Mary", "Mary"), ("The teacher", "Le professeur")])
    en, fr = _adjective(rng) if rng.random() < 0.5 else _infinitive(rng)
    return f'{who} said, "{en}"', f"{fr_who} a dit{NBSP}: «{NBSP}{fr}{NBSP}»"


_MAKERS = [(_adjective, 3), (_verb, 6), (_go, 2), (_infinitive, 2), (_quote, 1)]


def pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (English, French) pairs in a seeded order (about 40 fixed phrases first)."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for en, fr in PHRASES:
        if len(out) < n and en not in seen:
            seen.add(en)
            out.append((en, fr))
    makers = [m for m, w in _MAKERS for _ in range(w)]
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"the grammar gives fewer than {n} distinct sentences")
        en, fr = rng.choice(makers)(rng)
        if en not in seen:
            seen.add(en)
            out.append((en, fr))
    return out


def write_tsv(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` pairs as ``English<TAB>French<TAB>attribution`` lines."""
    path = Path(path)
    lines = [f"{en}\t{fr}\tgenerated #{i}" for i, (en, fr) in enumerate(pairs(n, seed))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # python tests/english_french.py OUT.tsv N [SEED]
    import sys

    write_tsv(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
