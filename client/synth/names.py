"""Fake but realistic-looking patient names, unique within a site.

Names are leak sentinels: tests search caches, logs and replies for them, so each
patient of a site gets a distinct (given, family) pair. The pair is a bijection of
the patient index (modular steps over prime-length lists), offset by profile and
seed, which keeps names unique for the first 2,000 patients of a site.
"""

from __future__ import annotations

__all__ = ["person_name"]

_FAMILY = (
    "Abernathy", "Bellweather", "Castellanos", "Dunleavy", "Ekwueme", "Fairbanks",
    "Gallagher", "Halvorsen", "Ingersoll", "Jablonski", "Kowalczyk", "Lindqvist",
    "Montgomery", "Nakamura", "Okonkwo", "Pemberton", "Quintanilla", "Rasmussen",
    "Szczepanski", "Thistlewood", "Underhill", "Valdivieso", "Whitcombe", "Yamaguchi",
    "Zielinski", "Achterberg", "Blackwood", "Carrington", "Delacroix", "Esterhazy",
    "Fitzgerald", "Grimsby", "Hollingsworth", "Iwasaki", "Kristoffersen",
    "Lockhart", "Marchetti", "Nightingale", "Oyelaran", "Prendergast", "Rutherford",
    "Salvatierra", "Tennyson", "Vandermeer", "Wollstonecraft", "Xenakis",
    "Youngblood", "Zamora", "Ashcombe", "Brightwater", "Coldwell", "Drummond",
    "Everhart",
)  # fmt: skip
_MALE = (
    "Ambrose", "Bartholomew", "Casimir", "Desmond", "Evander", "Fitzwilliam",
    "Gideon", "Horatio", "Ignatius", "Jasper", "Leopold", "Mortimer", "Nathaniel",
    "Octavius", "Percival", "Quentin", "Reginald", "Sebastian", "Thaddeus",
    "Ulysses", "Valentin", "Winston", "Xavier", "Yannick", "Zebulon", "Alistair",
    "Benedikt", "Cornelius", "Dashiell", "Emmerich", "Florian", "Gustavo",
    "Hamish", "Isidore", "Joaquin", "Lysander", "Maximilian", "Niall", "Oswin",
    "Peregrine", "Rupert", "Silvio", "Tobias", "Wendell", "Anselm", "Barnaby",
    "Crispin",
)  # fmt: skip
_FEMALE = (
    "Adelaide", "Beatrix", "Clementine", "Delphine", "Eudora", "Florentina",
    "Genevieve", "Henrietta", "Isadora", "Josephine", "Leonora", "Marguerite",
    "Ottilie", "Philippa", "Rosalind", "Seraphina", "Theodora", "Ursula",
    "Valentina", "Wilhelmina", "Yolanda", "Zenobia", "Anastasia", "Bernadette",
    "Cordelia", "Dorothea", "Evangeline", "Fenella", "Griselda", "Hermione",
    "Imogen", "Jacinta", "Lucinda", "Mirabel", "Nerissa", "Octavia", "Perpetua",
    "Rosamund", "Sybilla", "Tabitha", "Wilhelmine", "Araminta", "Bettina",
)  # fmt: skip
_INITIALS = "ABCDEFGHJKLMNPRSTVW"


def person_name(code: int, seed: int, index: int, gender: str) -> tuple[str, str, str]:
    """Fake (given name, family name, middle initial) of a patient.

    Args:
        code: Profile code.
        seed: Site seed.
        index: 1-based patient index.
        gender: "Male" or "Female".

    Returns:
        The three name parts.
    """
    offset = 7919 * code + 104729 * seed
    family = _FAMILY[(7 * index + offset) % len(_FAMILY)]
    given_list = _MALE if gender == "Male" else _FEMALE
    given = given_list[(11 * index + offset) % len(given_list)]
    return given, family, _INITIALS[(3 * index + offset) % len(_INITIALS)]
