"""Reading an inbound text: opt-out, opt-in and help keywords, and replies that
only *read like* an opt-out.

Both readings below see the message folded: Unicode compatibility forms unified
(NFKC, so a full-width or mathematical-bold STOP is STOP), typographic apostrophes
(U+2019, U+2018, U+02BC and the like) made ', and case folded. A message is also
read with the letters of other scripts that are drawn like Latin ones made Latin
(Cyrillic, Greek, Armenian, Cherokee, Lisu, small capitals: a STOP typed as U+0405
U+0422 U+041E U+0420), and that reading counts when it stops more: a look-alike
STOP is a STOP, a look-alike START or HELP stays conversation.

Keywords
--------
A keyword must be the whole message; case, spaces and punctuation do not count,
so "Stop.", " stop " and "opt-out" all match. A message made only of opt-out
keywords ("STOP STOP", "stop. stop!", "stop, unsubscribe") is that opt-out. If
any of them is STOPALL it is brand-wide: "STOP STOPALL" asks for the campaign
and for every campaign, and the wider reading is the safe one, since a wrongful
brand-wide stop costs the person a START while a campaign-only one would let
the brand's other campaigns text someone who asked them all to stop.

Revocation candidates
---------------------
The FCC's 2024 order (FCC 24-24; 47 CFR 64.1200(a)(10), (12)) lets consent be
revoked "by any reasonable means": a reply in other words must be honoured when
a reasonable person would read it as a wish to receive no more messages. So
every other reply is read for recall, and one that *could* be such a wish is a
revocation candidate: it blocks regular sends until a person decides. Flagging
too much delays texts until a reviewer resolves the reply; flagging too little
keeps texting someone who asked to stop; where in doubt, it flags.

The reading is built on structure, not on a list of sentences. The text is
normalised: accents dropped ("envíen" is "envien"), letter runs collapsed
("stooop", "pleeease"), spaced or dotted letters joined ("s t o p", "S.T.O.P"),
digits read as letters inside words ("st0p"), an opt-out keyword glued to
another keyword or a short word read as the words apart ("STOPSTART" as "stop
start", "pleasestop" as "please stop", "pleaseeestop" and "stopyouguys" too),
contractions opened ("don't", "dont", "dnt" are "do not"), stop-sign emoji (🛑 ⛔
🚫 🔕 📵) read as stop, crosses or a raised hand (❌ ✖ ✋ 🙅) as cancel, and 🖕 🤬 as
f*** off. Each word is then mapped to a canonical word: common abbreviations and
slang (pls, plz, txt, msg, msgs, u, ur, wanna, unsub, nvr, hmu, mo, numba, ion)
by a table, Spanish spelt as it sounds ("kiero", "kitenme", "sakenme") by
reading k as qu or c, misspellings ("unsubscibe", "remvoe", "mesage", "wromg",
"txet", "stp", "stoop", "sttop") by a table for short words and otherwise by
edit distance (rapidfuzz) to the words the rules look for: one edit, two from
eight letters, the same first letter, and up to six letters only a slip of the
finger (a neighbouring key, two letters swapped, one dropped or doubled), so
that real words stay themselves ("there" is not "these", "main" is not "mail");
a word the rules know is never corrected. The message is cut into clauses at
sentence punctuation and commas, and it is a candidate when

- a clause has a word that means stop whatever surrounds it: stop, stopall,
  unsubscribe (unsub...), opt out, revoke, cease, desist, Spanish parar/paren,
  French arrêter. A stop plainly about something else is left alone: "stop
  by", "stop in", "stop over", "stop at 5", "stop for lunch" (never "stop at
  once" or "stop for good"), "bus stop", "stop light", "can't stop", and stop
  before another verb's -ing ("stop taking the pills"), unless the clause
  also names messages, this or these, or the person ("stop blowing up my
  phone"), or the verb solicits ("stop asking for money");
- cancel, end, quit, halt, terminate, discontinue, pause, suspend, mute
  (Spanish cancelar, alto, baja, detener, anular...) come with something to
  end: the texts, messages, calls, alerts, the subscription, list, service or
  account, this, these, me; or end a wish ("I want to cancel", "I quit"); or
  stand in a message of at most four words ("cancel my appointment", "the
  end"), unless told not to happen ("please don't cancel"); or in a message
  or clause of nothing else but courtesy ("cancel please, thanks"). So do
  "enough" and "basta" in such a message (not in a question), "remove",
  "blocked", "spam", "I'm out", "leave" and "exit";
- a negation comes before a verb or noun of contact: do not / don't / never /
  can you not / no more / no further + text, message, SMS, call, email,
  contact, send, write, reach out, hit me up, ping, remind, notify, market,
  bother (Spanish "no me envíen", "no
  manden", "nunca más me escriban", "no me estén escribiendo", "nada de
  mensajes"; French "ne m'envoyez plus", "plus de SMS"; Portuguese "não
  mande"); a bare "no" before a noun only when nothing but courtesy follows
  ("no texts please", not "no reminder came");
- a wish about the messages is negated: don't want / need / wish + texts,
  these, this, any, your..., don't like these texts, not interested, I'd
  rather not get these (Spanish "no quiero mensajes", "ya no quiero", "no me
  interesa"; French "pas intéressé");
- no more / no further / no longer / anymore come with messages, a wish or
  courtesy; Spanish "ya no", "nunca más", "ya estuvo";
- the person asks to be removed: remove, delete, erase, unenroll + me, us, my
  number, my info; be taken off, take / get / scratch me off; off or out of the
  list; opt me out, count me out, want out; lose my number; scratch my name from
  your records; not in future texts; get these off my phone; leave, exit or get
  out of this list, group or chat ("how do I leave this"); rm me (Spanish
  bórrenme, sáquenme de la lista, darme de baja, desuscribirme, salir de la
  lista, acaben con estos mensajes, retiro mi consentimiento; French désabonner,
  supprimez mon numéro);
- it complains or refuses: leave me alone / be, go away, get lost, get off my
  phone, f*** off, give it a rest, you're annoying, bothering / harassing /
  spamming me, spam, unsolicited, unwanted, tired / sick of / so over these
  texts, sick of getting these, want nothing to do with this, not accepting
  texts, no use for these, these are annoying, "NO!" or "no no no" alone,
  "annoying" or "not again" alone, how many times do I have to ask, consent
  withdrawn, too many texts, too many of these, never shopped there, block or
  report you, who signed me up, I'd appreciate it if you stopped, being left
  alone, my lawyer will be in touch, I don't do text marketing, removal request,
  want off, invading my privacy, respect my wishes, my number is not for ads, I
  take back my consent, changed my mind about these texts, muting you, not one
  more text, one more and I block, do not ever, ever text me, I'm done getting
  these, junk, text someone else, pick a different number, how many more of
  these, forget I exist, zero texts, who asked, who told you to text me, how is
  this legal, "report" alone, spare me, save it, keep your promos, to never get
  these again, not tryna get these, step off, do not call, DNC, TCPA, FCC, sue,
  see you in court, talk to my lawyer, keep or still texting me, why are you
  texting me, why am I on this list, I told you to stop, how did you get my
  number, I never signed up / don't remember signing up / didn't consent / no
  permission / didn't request this; fewer texts, only text me if (a frequency
  limit the provider's policy says is respected); texts judged worst, pointless,
  not welcome (Spanish déjenme en paz, no sigan, no me llegue más publicidad, ya
  fue suficiente, demasiados mensajes, no me gustan sus mensajes, ¿cómo salgo de
  esta lista?, ¿cómo hago para no recibir más?, respeten mi privacidad, no les
  di permiso, no doy mi consentimiento, ni se les ocurra, ni uno más, ya estoy
  harta, no los soporto, qué lata con sus mensajes, otra vez con sus mensajes,
  sin publicidad, no acepto mensajes, me tienen cansado, me están molestando,
  ¿por qué me siguen escribiendo?, ya les dije que no, los voy a reportar,
  abstenerse de enviar);
- it says the number reached the wrong person: wrong number / person, you have
  the wrong..., not my number, not the person you want, I'm not Kevin, there's
  no Maria here, no Maria here or you have the wrong Maria (a capitalised name
  after the denial), I don't know you, no one here by that name, passed away,
  the previous owner, never been a customer (Spanish número equivocado, se
  equivocó, no soy, ese número no es mío, ya no le pertenece, nunca he sido
  cliente; French mauvais numéro). "I sent that to the wrong person" is not.

A decline and nothing else ("No thanks", "no thank you, I'm good", "hard pass",
"thanks but no thanks", "please no", "nah I'm good", "I'm all set, thanks",
"don't need it", "I'm good on these", "I'll pass on these", "I'm all set with
these texts", "daily texts? no thanks", "gracias pero no gracias", "not looking
for a loan", "goodbye forever"), a judgement and nothing else ("not wanted",
"not welcome", "this is excessive"), a refusal for good and nothing else ("no
never", "not now, not ever", "hell no"), and quitting said of oneself ("I'm
done", "leave", "exit") are candidates: read alone after a marketing text they
could mean "no more of these". A bare "no", "who is this?", "not now" and "No
thanks, see you Tuesday" are conversation: they answer the question asked.

Languages: English and Spanish are covered throughout; French for the main
forms (arrêt, désabonner, ne ... plus, plus de SMS, pas intéressé, laissez-moi
tranquille, mauvais numéro); Portuguese for a few (pare, não mande, não quero,
mensagens, descadastrar). Chinese, Japanese, Korean, Russian, Vietnamese,
Tagalog, Haitian Creole, German, Italian and Arabic only by their commonest
words for stop and unsubscribe (停止, 退订, 配信停止, 登録解除, 수신거부, 구독취소,
стоп, отписаться, прекратите, ngừng gửi, đừng nhắn, tigil, sispann, pa vle mesaj,
abmelden, nicht mehr schreiben, hör auf, cancellami, rimuovimi, توقف, لا ترسل),
and by their one-word replies for stop or cancel when that word is the whole
reply, a signature below it read through (取消, TD, ストップ, キャンセル, 중지, 탈퇴,
отмена, hủy, hinto, anile, kündigen, annulla, إيقاف and a few more; Spanish "para
ya", "pará", "fin" and "se acabó" too, which "para" alone is not, and Portuguese
"sair"): other
phrasings in them, and every other language, are not read beyond the keywords (STOP and the like,
as the whole message), an English or Spanish word among their words, and the
emoji.
"""

from __future__ import annotations

import enum
import functools
import itertools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rapidfuzz import process
from rapidfuzz.distance import OSA

OPT_OUT_KEYWORDS = frozenset({"STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
BRAND_WIDE_OPT_OUT_KEYWORDS = frozenset({"STOPALL"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_OPT_OUT_RUN = re.compile(
    "(?:"
    + "|".join(sorted(OPT_OUT_KEYWORDS | BRAND_WIDE_OPT_OUT_KEYWORDS, key=len, reverse=True))
    + ")+"
)


class Intent(enum.Enum):
    OPT_OUT = "opt_out"
    OPT_OUT_BRAND_WIDE = "opt_out_brand_wide"
    OPT_IN = "opt_in"
    HELP = "help"
    REVOCATION_CANDIDATE = "revocation_candidate"
    CONVERSATION = "conversation"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _lexicon(table: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Surface form -> canonical words, from canonical words -> their surface forms."""
    return {
        surface: tuple(canon.split()) for canon, forms in table.items() for surface in forms.split()
    }


# Mapped before NFKC, which would make the acute accent (U+00B4) a space and a combining mark.
# The Hangul fillers are letters to Unicode (category Lo) that show nothing, so "STOP"
# with one pasted beside it read as no keyword: they are read as the blank they show.
_BEFORE_NFKC = str.maketrans(
    {
        **dict.fromkeys("\u2019\u2018\u02bc\u2032\u00b4`", "'"),
        **dict.fromkeys("\u115f\u1160\u3164\uffa0", " "),
    }
)


def _fold(text: str) -> str:
    """``text`` with compatibility forms unified, apostrophes made ', invisible Hangul
    fillers made spaces, and case folded."""
    return unicodedata.normalize("NFKC", text.translate(_BEFORE_NFKC)).casefold()


def normalise(text: str) -> str:
    """Upper-case letters and digits of the folded text: the form keywords are compared in."""
    return "".join(ch for ch in _fold(text) if ch.isalnum()).upper()


def _small_capitals() -> dict[str, str]:
    """Latin small capitals (U+1D00 ...), which NFKC leaves as they are, as their letter."""
    letters = {}
    for code in (*range(0x0250, 0x02B0), *range(0x1D00, 0x1D2C), *range(0xA720, 0xA740)):
        name = unicodedata.name(chr(code), "")
        prefix = "LATIN LETTER SMALL CAPITAL "
        if name.startswith(prefix) and len(name) == len(prefix) + 1:
            letters[chr(code)] = name[-1].lower()
    return letters


# Letters of other scripts drawn like Latin ones: a phone set to a Cyrillic keyboard
# types STOP as U+0405 U+0422 U+041E U+0420, which NFKC and case folding leave as
# no keyword.
_LOOK_ALIKE_SCRIPTS = (
    # Cyrillic capitals and small letters
    (
        "\u0410\u0412\u0415\u0405\u0406\u0408\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425"
        "\u0423\u04ae\u051a\u051c\u04c0\u0500",
        "ABESIJKMHOPCTXYYQWID",
    ),
    (
        "\u0430\u0435\u0455\u0456\u0458\u043e\u0440\u0441\u0443\u0445\u04bb\u0501\u051b\u051d"
        "\u04cf\u04af\u043a\u0442\u043c\u043d\u0432",
        "aesijopcyxhdqwlyktmhb",
    ),
    # Greek
    (
        "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7"
        "\u03f9\u037f",
        "ABEZHIKMNOPTYXCJ",
    ),
    ("\u03bf\u03bd\u03b9\u03ba\u03c4\u03c1\u03b1\u03c5\u03f2\u03f3", "oviktpaucj"),
    # Armenian
    ("\u054f\u0555\u054d\u0585\u057d\u0578\u0570\u0566", "SOUounhq"),
    # Cherokee
    (
        "\u13aa\u13f4\u13df\u13a0\u13ac\u13c0\u13bb\u13a5\u13ab\u13e6\u13de\u13b7\u13be\u13e2"
        "\u13d2\u13da\u13a2\u13d9\u13b3\u13c3",
        "ABCDEGHiJKLMOPRSTVWZ",
    ),
    # Lisu
    (
        "\ua4ee\ua4d0\ua4da\ua4d3\ua4f0\ua4dd\ua4d6\ua4e7\ua4f2\ua4d9\ua4d7\ua4e1\ua4df\ua4e0"
        "\ua4f3\ua4d1\ua4e3\ua4e2\ua4d4\ua4f4\ua4e6\ua4ea\ua4eb\ua4ec\ua4dc",
        "ABCDEFGHIJKLMNOPRSTUVWXYZ",
    ),
)


def _enclosed_letters() -> dict[str, str]:
    """Negative circled and negative squared Latin capitals (U+1F150 ..., U+1F170 ...)
    and regional indicator symbols (U+1F1E6 ...), which NFKC leaves as they are, as
    their letter: "🅢🅣🅞🅟" and "🆂🆃🅾🅿" are a STOP drawn to slip past a filter."""
    return {
        chr(start + i): chr(ord("A") + i)
        for start in (0x1F150, 0x1F170, 0x1F1E6)
        for i in range(26)
    }


_LOOK_ALIKES = str.maketrans(
    {
        **_small_capitals(),
        **_enclosed_letters(),
        **{
            drawn: latin
            for drawn_letters, latin_letters in _LOOK_ALIKE_SCRIPTS
            for drawn, latin in zip(drawn_letters, latin_letters, strict=True)
        },
    }
)

# How far a reading stops sends: a look-alike spelling is taken only when it stops more.
_STOPS = {Intent.REVOCATION_CANDIDATE: 1, Intent.OPT_OUT: 2, Intent.OPT_OUT_BRAND_WIDE: 3}


def classify(text: str) -> Intent:
    """What an inbound message asks for.

    The text is also read with look-alike letters made Latin, and that reading
    counts when it stops more: a "STOP" in Cyrillic letters is the person's STOP,
    while a look-alike START or HELP is left as written, since resuming consent on
    a guess would allow what the person may not have asked for.
    """
    intent = _classify(text)
    latin = text.translate(_LOOK_ALIKES)
    if latin != text:
        drawn = _classify(latin)
        if _STOPS.get(drawn, 0) > _STOPS.get(intent, 0):
            return drawn
    return intent


def _classify(text: str) -> Intent:
    word = normalise(text)
    if _OPT_OUT_RUN.fullmatch(word):
        # One opt-out keyword or several; a STOPALL in it makes it brand-wide
        # however the run splits into keywords.
        if any(keyword in word for keyword in BRAND_WIDE_OPT_OUT_KEYWORDS):
            return Intent.OPT_OUT_BRAND_WIDE
        return Intent.OPT_OUT
    if word in OPT_IN_KEYWORDS or word in HELP_KEYWORDS:
        # The keyword is read from letters alone, so "START 🛑" or "HELP ✋" would
        # resume consent, or keep it, while the emoji beside it says stop: a reply
        # that says both is held for a person to read.
        if reads_like_an_opt_out(text):
            return Intent.REVOCATION_CANDIDATE
        return Intent.OPT_IN if word in OPT_IN_KEYWORDS else Intent.HELP
    # A keyword with a digit or symbol for a letter ("QU1T", "3ND", "$TOP", "STØP"): the
    # person's STOP, written so a filter may miss it; held for a person to read.
    if _drawn_opt_out(text):
        return Intent.REVOCATION_CANDIDATE
    if reads_like_an_opt_out(text):
        return Intent.REVOCATION_CANDIDATE
    return Intent.CONVERSATION


# ---------------------------------------------------------------------------
# Normalising: text -> clauses of canonical words.

_EMOJI = {
    **dict.fromkeys("\U0001f6d1\u26d4\U0001f6ab\U0001f515\U0001f4f5", " stop "),
    **dict.fromkeys("\u274c\u2716\u274e\u270b\U0001f91a\U0001f645", " cancel "),
    **dict.fromkeys("\U0001f595\U0001f92c", " fuck off "),
}
_EMOJI_TABLE = str.maketrans(_EMOJI)

# Written-out contractions; a bare n't is "not" after the rest ("isn't", "doesn't").
_CONTRACTIONS = (
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"n't\b"), " not"),
)
_E_MAIL = re.compile(r"\be[\s-]+mail")
# Runs of single letters spaced or dotted out: "s t o p", "S.T.O.P", "u-n-s-u-b".
_SPACED_LETTERS = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][\s.\-_*•]+){2,}[^\W\d_](?![^\W\d_])")
_CLAUSE_BREAK = re.compile(r"[.!?;,:\n\r\u2026()\[\]{}\"\u00a1\u00bf|/]+|\s[-\u2013\u2014]+\s")
# A word's letters and digits, and a "$" or "@" before a letter or digit in it: they
# stand for the S and A of "$TOP", "UN$UBSCRIBE" and "C@NCEL" (_LEET), which a word
# of letters alone would lose.
_TOKEN = re.compile(r"(?:[^\W_]|[$@](?=[^\W_]))+")
_LEET = str.maketrans("013457@$", "oieastas")
# Symbols and letters drawn like a keyword's letters that are no look-alike of another
# script's alphabet (an O with a stroke, the empty set, a circle, the ideographic zero,
# Malayalam TTHA; a down tack for T, a reversed S, a bar for I, Cyrillic TSE for U),
# read only for a whole-message keyword, as the digits above are.
_DRAWN = str.maketrans(
    {
        **dict.fromkeys("\u00f8\u2205\u25cb\u25ef\u3007\u2298\u0d20", "o"),
        "\u22a4": "t",
        "\u01a8": "s",
        "|": "i",
        "\u0446": "u",
    }
)


def _drawn_opt_out(text: str) -> bool:
    """Whether ``text`` is a run of opt-out keywords with digits (of any script: a
    Kannada zero for the O), symbols or "()" drawn for letters ("ST()P"), or with an
    l for the I ("QUlT")."""
    folded = _fold(text).replace("()", "o")
    digits = "".join(
        str(unicodedata.decimal(ch)) if not ch.isascii() and ch.isdecimal() else ch for ch in folded
    )
    drawn = normalise(digits.translate(_LEET).translate(_DRAWN))
    return bool(_OPT_OUT_RUN.fullmatch(drawn) or _OPT_OUT_RUN.fullmatch(drawn.replace("L", "I")))


# Surface form -> canonical word(s). Abbreviations, slang, contractions written
# without an apostrophe, and misspellings of words too short for edit distance.
_LEXICON = _lexicon(
    {
        "do not": "dont dnt dun donot doent ion",
        "did not": "didnt didn",
        "does not": "doesnt doesn",
        "can not": "cant",
        "will not": "wont",
        "is not": "isnt aint",
        "have not": "havent",
        "has not": "hasnt",
        "would not": "wouldnt",
        "could not": "couldnt",
        "should not": "shouldnt",
        "was not": "wasnt",
        "are not": "arent",
        "not": "nt",
        "no more": "nomore",
        "more": "mre mroe moar mor mo",
        "no mas": "nomas",
        "anymore": "anymore anymor anymoe nemore anymo",
        "please": """
            pls plz plez pleas pleaz pleaze pleez pleeze plse pl plss plzz plx pleae pleasr plea
            plis plox porfa porfavor svp
        """,
        "never": "nvr neva nevr nver nevar",
        "thanks": "thx thnx thnks tnx ty tks thanx thanz",
        "no thanks": "nty nothx nothanks",
        "you": "u yu yuo yous yall",
        "your": "ur yr yor youre",
        "want to": "wanna wana wanta",
        "want": "wnt wan wamt whant",
        "going to": "gonna",
        "i am": "im",
        "are": "r",
        "stop": """
            stp stpo sotp stopp stoop stahp srop stopt sstop stpp stoo stlp stoip stap stopo
            sotop syop dtop xtop sop spo sopt
        """,
        "stopped": "stops stopped stopping stoped stoping",
        "stopall": "stopall",
        "optout": "optout optedout optingout optouts",
        "opt": "opting opted opts",
        "unsubscribe": "unsub unsubs unsubbed unsuscribe unscribe unsbscribe",
        "cancel": "cancell cancle cancl cancels canceled cancelled canceling cancelling cxl cncl",
        "end": "ends ending",
        "quit": "quitt qiut quiting quitting quits qit quiit",
        "text": """
            txt txts tx txs txting txtin txtn txtng texting textin textn texts tex text textt
            txtx txtz texte textos texto sms smss smses mms smsing
        """,
        "texted": "txted texted textd",
        "message": """
            msg msgs mssg mssgs msgz mesg messg msges message messages messaging msging mesages
            mesage msj msjs mensaje mensajes mensajitos mensagem mensagens msgn
        """,
        "messaged": "messaged",
        "call": "call calls calling callin llamadas llamada appels robocall robocalls",
        "called": "called",
        "email": "email emails emailing mail mails emial correos correo courriel courriels",
        "emailed": "emailed",
        "contact": """
            contact contacting contacts contactar contacto contactos communication
            communications communicate communicating correspondence outreach solicitation
            solicitations soliciting solicit
        """,
        "contacted": "contacted",
        "send": "send sending sends snd sendin",
        "sent": "sent",
        "write": "write writing dm dms ping pings pinging hmu whatsapp reach reaching",
        "notice": """
            notification notifications notifs notif alert alerts reminder reminders promo promos
            promotion promotions promotional ads ad advert adverts advertisement advertisements
            advertising marketing newsletter newsletters blast blasts coupon coupons offers
            deals robotext robotexts notificaciones promociones ofertas publicidad anuncios
            recordatorios alertas junk crap bs garbage nonsense stuff updates remind reminding
            notify notifying market marketed advertise promote promoting cupones cupon donation
            donations requests appeals fundraising donativos donaciones
        """,
        "service": """
            subscription subscriptions membership list lists program
            programme service services account campaign club mailing database suscripcion
            suscripciones membresia lista listas listado servicio cuenta programa liste abonnement
            group groups thread chat groupchat grupo grupos
        """,
        "subscribe": "subscribe subscribed subscribing suscribi suscribo suscrito suscrita",
        "number": """
            number numbers num numbr nmbr numero numeros phone cell cellphone celular telefono
            mobile line digits numba numbah numbuh
        """,
        "info": "info information data details datos informacion profile name address",
        "remove": "rmv remov remve remvoe remoce remuve",
        "alone": "alon along alomne",
        "leave": "leav lv leve leace",
        "interested": "intrested",
        "me": "mw",
        "wrong": "wrng wron wrog rong wromg wrnog",
    }
)

# Words worth finding through a typo: edit distance maps a long unknown word to
# one of these. Real words one edit away from one of them are listed apart.
_FUZZY_TARGETS = sorted(
    _words(
        """
    unsubscribe stopall optout revoke remove delete cancel contact message messages messaging
    texting please interested interest anymore alone leave bother bothering harass harassing
    harassment spamming subscription notifications discontinue terminate unenroll deregister
    unregister unsolicited unwanted desist number receive receiving sending calling emails
    mensajes molesten molestar cancelar eliminar equivocado equivocada interesa interesado
    interesada suscripcion desuscribir quiero escriban envien manden llamen wrong getting already
    enough consent never where nobody block blocked blocking wanna unsub along knock permission
    person these customer gave prefer further contacted opting basta
    borrame borrenme dejenme dejen escribirme escribir escriban mandar mandarme manden mandes
    enviar enviarme envies llamar llamarme llamen contactar contacten contactarme molestarme
    reportar borrar borren eliminar eliminen sacame saquen saquenme desuscribirme favor porfa
    numero arretez arreter arrete unsubscribe stopall
    """
    )
)
_FUZZY_TARGETS_4 = sorted(
    _words(
        """
        text want more know take list call lost dont mail away done spam send wrong alone leave
        never block these where along knock wanna unsub here your
        """
    )
)
_NOT_TYPOS = _words(
    """
    massage testing tested remote removal contract contracts member members lumber number
    numbers interests receipt receipts recieve leaves leaved revoked cancer center centre
    sending ending dealing please pleased pleasure amber humber delta delete quieres quiere
    quieren calming culling caller callers bothe anymore another interest messiah maniac mandes
    llamas enviar dealer palace police prices places plates mores emailed remain remind remake
    relive revise resolve evolve involve revolve canceled cameo concat contacts conduct context
    content contest intrested molesta molesto molestia molestias massages constant constants slam
    there their three theme newer were black blacks parent parents pagar grave
    """
)
_STRONG_STEMS = (
    ("unsubs", "unsubscribe"),
    ("revok", "revoke"),
    ("revoc", "revoke"),
    ("desuscri", "unsubscribe"),
    ("desinscri", "unsubscribe"),
    ("desabon", "unsubscribe"),
    ("desafili", "unsubscribe"),
    ("descadastr", "unsubscribe"),
)


_DOUBLE = re.compile(r"(.)(?=\1)")
_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {
    ch: {
        other
        for r2, row2 in enumerate(_KEYBOARD)
        for c2, other in enumerate(row2)
        if abs(r2 - r) <= 1 and abs(c2 - c) <= 1 and other != ch
    }
    for r, row in enumerate(_KEYBOARD)
    for c, ch in enumerate(row)
}


def _slip(token: str, target: str) -> bool:
    """Whether a short ``token`` is ``target`` typed with one slip of the finger:
    two letters swapped, one dropped, or one hit on a neighbouring key. A real word
    one letter off ("main" for "mail", "also" for "alto") is not."""
    if len(token) != len(target):
        return True  # a letter dropped from a five-letter word: "wrng"
    diffs = [(a, b) for a, b in zip(token, target, strict=True) if a != b]
    if len(diffs) == 2:
        return sorted(token) == sorted(target)
    return len(diffs) == 1 and diffs[0][0] in _NEIGHBOURS.get(diffs[0][1], set())


@functools.lru_cache(maxsize=8192)
def _canon(token: str) -> tuple[str, ...]:
    """The canonical word(s) for one token of the folded, accent-free text."""
    if token in _LEXICON:
        return _LEXICON[token]
    if token.isdigit():
        return ()
    if not token.isalpha():
        leet = token.translate(_LEET)
        # A stop word counts however the digit falls ("5top" as "st0p"): _known.
        if leet.isalpha() and (
            _known(leet) or _STOP_LIKE_PREFIX.match(leet) or _glued_keywords(leet)
        ):
            return _canon(leet)
        letters = "".join(ch for ch in token if ch.isalpha())
        return _canon(letters) if letters else ()
    return _peeled(token)


PEELED_AT_MOST = 64
"""Stop words peeled off the front of one token ("stopstopit") before the rest is
left unread: each peel reads the rest again, so a body of one long word would take
time that grows with its square. Past them the token is read as the stop words
peeled and an unread word, which ``classify`` holds for review."""


def _peeled(token: str) -> tuple[str, ...]:
    """A token of letters read whole, or as the stop words glued to its front
    ("stopit", "stoptexting") and the rest read on. A loop, not a call per stop
    word: a body may be one word of thousands of them."""
    table = _glued_table(token)
    # Each stop word peeled and where the rest after it starts, outermost first.
    peels: list[tuple[str, int]] = []
    start = 0
    while True:
        whole = token[start:]
        read = _read_whole(whole, table, start)
        if read is not None:
            break
        glued = _STOP_LIKE_PREFIX.match(whole)
        if glued is None or glued.end() == len(whole):
            read = _fuzzed(whole)
            break
        if len(peels) == PEELED_AT_MOST:
            read = None  # left unread: every peel below is kept
            break
        peels.append((glued.group(), start))
        start += glued.end()
    rest_start = start
    for prefix, at in reversed(peels):
        rest = token[rest_start:]
        if read is None or read != (rest,) or set(read) & (_COURTESY | _ME | _DEMONSTRATIVE):
            read = (*_canon(prefix), *((rest,) if read is None else read))
        else:
            read = _fuzzed(token[at:])
        rest_start = at
    assert read is not None
    return read


def _read_whole(token: str, table: _GluedTable, start: int) -> tuple[str, ...] | None:
    """The reading of ``token`` (letters only, ``table``'s token from ``start`` on)
    as a word, or None when it is no word known, misspelt or glued from keywords."""
    if token in _LEXICON:
        return _LEXICON[token]
    # A tail of a token holds "...enme" only if the token does, which was read first:
    # looked for in the whole token only, or a long word is read again for each peel.
    if start == 0 and _REMOVE_ME.search(token) and len(token) >= 6:
        return (token,)  # "elimínenme", never fuzzed into "eliminen"
    for stem, word in _STRONG_STEMS:
        if token.startswith(stem):
            return (word,)
    if token in _VOCABULARY:
        return (token,)
    # Spanish spelt as it sounds: "kiero", "kitenme", "sakenme" (quiero, quítenme, sáquenme).
    if "k" in token and (start == 0 or len(token) <= _LONGEST_KNOWN):
        spelt = re.sub(r"k", "c", re.sub(r"k(?=[ei])", "qu", token))
        if spelt in _VOCABULARY or (start == 0 and _REMOVE_ME.search(spelt) and len(spelt) >= 6):
            return (spelt,)
    # "stooop", "sttop", "blockeed", "caall": letters doubled or run on. Squeezed, a
    # token keeps a letter of each run at least: one of more runs than the longest
    # word is none (and is not squeezed, which takes as long as the token).
    if _runs(token, _LONGEST_KNOWN + 1) <= _LONGEST_KNOWN:
        # A letter dropped from a token longer than any word but one is still no word:
        # only a short token is copied once per doubled letter, not one of thousands.
        singles = (
            [token[: m.start()] + token[m.start() + 1 :] for m in _DOUBLE.finditer(token)]
            if len(token) <= _LONGEST_KNOWN + 1
            else []
        )
        for squeezed in (
            re.sub(r"(.)\1{2,}", r"\1\1", token),
            re.sub(r"(.)\1+", r"\1", token),
            *singles,
        ):
            if squeezed != token and squeezed in _LEXICON:
                return _LEXICON[squeezed]
            if squeezed != token and squeezed in _TYPO_TARGETS:
                return (squeezed,)
    # Stretched letters ("pleaseeestop") are cut only where the exact cut fails.
    glued_words = _glued_at(table, start) or (_DOUBLE.search(token) and _glued_stretched(token))
    if glued_words:
        return tuple(w for part in glued_words for w in _canon(part))
    return None


def _runs(token: str, most: int) -> int:
    """How many runs of one letter ``token`` holds, counted up to ``most``."""
    runs = 0
    previous = ""
    for ch in token:
        if ch != previous:
            runs += 1
            if runs == most:
                break
            previous = ch
    return runs


def _fuzzed(token: str) -> tuple[str, ...]:
    """``token`` as the word it misspells, or as itself (a token longer than any word
    by more than the two edits allowed is no misspelling of one)."""
    if 4 <= len(token) <= _LONGEST_FUZZY + 2 and token not in _NOT_TYPOS:
        cutoff = 2 if len(token) >= 8 else 1
        # A four-letter word only as a five-letter one with a letter dropped ("wrng")
        # or as one of a few four-letter words that are never stop itself ("txet").
        candidates = [
            t
            for t in (_FUZZY_TARGETS if len(token) > 4 else _FUZZY_TARGETS_4)
            if t[0] == token[0] and (len(token) > 4 or len(t) in (4, 5))
        ]
        match = process.extractOne(token, candidates, scorer=OSA.distance, score_cutoff=cutoff)
        if match is not None and (len(token) > 6 or _slip(token, match[0])):
            return _LEXICON.get(match[0], (match[0],))
    return (token,)


_STOP_LIKE_PREFIX = re.compile(
    r"(?:stopall|stop|unsubscribe|unsub|optout|cancel|remove)(?=[a-z]{2,})"
)


# An opt-out keyword typed with no space beside another keyword or a short word
# ("STOPSTART", "HELPSTOP", "pleasestop", "stopnow"): read as the words apart, so
# the stop in it is read as in "STOP START". Only these parts, never any short
# word, so that "endless", "friend", "quite", "nonstop" and "backstop" stay words.
_GLUED_OPT_OUTS = _words("stop stopall unsubscribe optout revoke cancel end quit")
_GLUED_PARTS = sorted(
    _GLUED_OPT_OUTS
    | _words(
        """
        start unstop yes help info please pls plz plez now me us it this these them
        thanks thx ty asap already just right ok okay you yall all guys
        """
    ),
    key=len,
    reverse=True,
)


_PARTS_BY_LETTER: dict[str, tuple[str, ...]] = {}
for _part in _GLUED_PARTS:  # longest first, as _GLUED_PARTS is
    _PARTS_BY_LETTER[_part[0]] = (*_PARTS_BY_LETTER.get(_part[0], ()), _part)
_LONGEST_PART = len(_GLUED_PARTS[0])


@dataclass(frozen=True)
class _GluedTable:
    """How each tail of a token cuts into _GLUED_PARTS (``_glued_table``)."""

    first: list[str]
    """first[i]: the longest part that starts token[i:] and leaves a cuttable rest
    ("" where none does)."""
    parts: list[int]
    """parts[i]: how many parts token[i:] cuts into."""
    opt_out: list[bool]
    """opt_out[i]: whether an opt-out keyword is among them."""


def _glued_table(token: str) -> _GluedTable:
    """Cut from the end, not by recursion: a body may be one word of thousands of
    letters, and every tail of it is cut by the one table. A stretch as long as the
    longest part that no cut reaches ends it: nothing before it can be cut."""
    n = len(token)
    first = [""] * (n + 1)
    parts = [0] * (n + 1)
    opt_out = [False] * (n + 1)
    cuttable = [False] * n + [True]
    uncut = 0  # positions in a row, up to i, from which no cut reaches the end
    for i in range(n - 1, -1, -1):
        for part in _PARTS_BY_LETTER.get(token[i], ()):
            after = i + len(part)
            if after <= n and cuttable[after] and token.startswith(part, i):
                first[i], cuttable[i] = part, True
                parts[i] = parts[after] + 1
                opt_out[i] = opt_out[after] or part in _GLUED_OPT_OUTS
                break
        uncut = 0 if cuttable[i] else uncut + 1
        if uncut >= _LONGEST_PART:
            break
    return _GluedTable(first, parts, opt_out)


def _glued_at(table: _GluedTable, start: int) -> tuple[str, ...]:
    """The tail of ``table``'s token from ``start`` cut into two or more of
    _GLUED_PARTS, one an opt-out keyword, or ()."""
    if not table.first[start] or table.parts[start] < 2 or not table.opt_out[start]:
        return ()
    cut = []
    i = start
    while table.first[i]:
        cut.append(table.first[i])
        i += len(table.first[i])
    return tuple(cut)


@functools.lru_cache(maxsize=8192)
def _glued_keywords(token: str) -> tuple[str, ...]:
    """``token`` cut into two or more of _GLUED_PARTS, one an opt-out keyword, or ()."""
    return _glued_at(_glued_table(token), 0) if token else ()


_STRETCHED_PARTS = [(part, re.sub(r"(.)\1+", r"\1", part)) for part in _GLUED_PARTS]
"""Each part with its letter runs read as one letter: its letters as typed
stretched ("pleaseee", "yaaall") are matched against these."""

_STRETCHED_BY_LETTER: dict[str, list[tuple[str, str]]] = {}
for _part, _squeezed in _STRETCHED_PARTS:  # longest first, as _GLUED_PARTS is
    _STRETCHED_BY_LETTER.setdefault(_squeezed[0], []).append((_part, _squeezed))


@functools.lru_cache(maxsize=8192)
def _glued_stretched(token: str) -> tuple[str, ...]:
    """``_glued_keywords`` for a token whose parts may have their letters stretched
    ("STOPPLEASEEE", "pleaseeestop", "stopyaaall", "STOPPPPLEASE"), or (): squeezing
    the whole token first would eat a letter two parts share ("stopp|please").

    Each letter of a part takes a whole run of that letter in the token, but the last,
    which may leave the rest of its run to the next part. Cut from the end, as there."""
    n = len(token)
    run_end = [n] * n  # run_end[i]: where the run of token[i]'s letter ending past i stops
    for i in range(n - 2, -1, -1):
        run_end[i] = run_end[i + 1] if token[i] == token[i + 1] else i + 1
    if n:
        run_end[n - 1] = n
    first: list[tuple[str, int]] = [("", 0)] * (n + 1)
    cuttable = [False] * n + [True]
    # next_cut[j]: the first cuttable position from j on, so a part's last letter finds
    # where the rest of its run may go at once, not by a look along a run of thousands.
    next_cut = [n + 1] * n + [n]
    for i in range(n - 1, -1, -1):
        for part, letters in _STRETCHED_BY_LETTER.get(token[i], ()):
            p = i
            for c in letters[:-1]:
                if p >= n or token[p] != c:
                    break
                p = run_end[p]
            else:
                if p < n and token[p] == letters[-1]:
                    end = next_cut[p + 1]
                    if end <= run_end[p]:
                        first[i], cuttable[i] = (part, end), True
                        break
        next_cut[i] = i if cuttable[i] else next_cut[i + 1]
    if not cuttable[0]:
        return ()
    parts = []
    i = 0
    while i < n:
        part, i = first[i]
        parts.append(part)
    if len(parts) >= 2 and not _GLUED_OPT_OUTS.isdisjoint(parts):
        return tuple(parts)
    return ()


def _plain(text: str) -> str:
    """The folded text without accents, emoji read, contractions opened, letters joined."""
    folded = _fold(text).translate(_EMOJI_TABLE)
    folded = unicodedata.normalize(
        "NFC",
        "".join(ch for ch in unicodedata.normalize("NFD", folded) if not unicodedata.combining(ch)),
    )
    for pattern, replacement in _CONTRACTIONS:
        folded = pattern.sub(replacement, folded)
    folded = _E_MAIL.sub("email", folded)
    return _SPACED_LETTERS.sub(_join_letters, folded)


def _clauses(plain: str) -> list[list[str]]:
    """The message cut at sentence punctuation and commas, each part as canonical words."""
    clauses = []
    for part in _CLAUSE_BREAK.split(plain):
        tokens = _join_split_words(_TOKEN.findall(part.replace("'", " ")))
        words = _phrases([w for token in tokens for w in _canon(token)])
        if words:
            clauses.append(words)
    return clauses


def _phrases(words: list[str]) -> list[str]:
    """Contact verbs of more than one word made one: "hit (me) up", "get in touch"."""
    out: list[str] = []
    for word in words:
        if word == "up" and out[-1:] in (["hit"], ["hitting"]):
            out[-1] = "write"
        elif word == "up" and out[-2:-1] in (["hit"], ["hitting"]) and out[-1] in _ME:
            out[-2] = "write"
        elif word == "touch" and out[-2:] in (["get", "in"], ["be", "in"], ["keep", "in"]):
            out[-2:] = ["contact"]
        else:
            out.append(word)
    return out


def _known(word: str) -> bool:
    """Whether ``word`` is in the lexicon or the stop words as it is spelled."""
    return word in _LEXICON or word in _STRONG or any(word.startswith(s) for s, _ in _STRONG_STEMS)


def _joins_to_a_stop_word(word: str) -> bool:
    return (
        word in _STRONG
        or word in {"unsub", "optout", "stopall", "nomore", "nomas"}
        or any(word.startswith(s) for s, _ in _STRONG_STEMS)
    )


def _join_letters(match: re.Match[str]) -> str:
    letters = "".join(ch for ch in match.group() if ch.isalpha())
    return f" {letters} " if _known(letters) else match.group()


def _join_split_words(tokens: list[str]) -> list[str]:
    """Words a space cut in two: "un subscribe", "st op", "opt out", "any more"."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if i + 1 < len(tokens) and _joins_to_a_stop_word(tokens[i] + tokens[i + 1]):
            out.append(tokens[i] + tokens[i + 1])
            i += 2
            continue
        out.append(tokens[i])
        i += 1
    return out


# ---------------------------------------------------------------------------
# Vocabulary the rules look for (canonical words, accents dropped).

_STRONG = _words(
    """
    stop stopall unsubscribe optout revoke cease desist parar paren parenle parale parele arret
    arrete arretez arreter arretes
    """
)
# Words that end something but have everyday meanings too.
_ENDERS = _words(
    """
    cancel end quit halt terminate discontinue pause suspend stopped cancelar cancela cancelen
    cancele cancelo cancelame cancelenme alto baja detener detengan detenga detente detenganse
    suspender suspendan anular anulen anule terminar terminen pare parem disable deactivate mute
    silence kill cut exit
    """
)
_ENOUGH = _words("enough basta suficiente assez chega")
_CONTACT = _words("text message call email contact send write notice spam")
_CONTACT_PAST = _words("texted messaged called emailed contacted sent")
_SERVICE = _words("service subscribe")
_ME = _words("me us myself mine nos moi nous")
_POSSESSIVE = _words("my this our mi mis este esta nuestro mon ce meu that the")
_IDENT = _words("number info service email contact")
_DEMONSTRATIVE = _words(
    """
    this these those them it all everything that esto estos estas eso todo todos ca tout isso
    isto tudo
    """
)
_COURTESY = _words(
    """
    please now thanks thank you ok okay k already asap immediately right away just all it
    everything this that these sir maam guys lol omg god jesus seriously man dude bro for good
    real really the hell fuck fucking damn freaking oh my i am is s ya ahora todo por favor
    gracias vale merci de una vez inmediatamente again once and ffs wtf jeez geez pretty kindly
    thankyou hey hi hello folks everyone yo ugh bye goodbye enough plz sorry hola senor senora
    oui si a an with of was lo la le les el we thats are your ll m do mas more muchas mucho bien
    re ve d will be been have has number going gonna to
    """
)
_DESIRE = _words(
    """
    want wish need like care desire require appreciate quiero deseo necesito queremos deseamos
    quiere desea necesitamos veux souhaite quero preciso wanted wants needed
    """
)
# Verbs of liking take the messages themselves as object: "don't like these
# texts", never "don't like this time".
_LIKING = _words("like care appreciate love enjoy")
_LIKED = _CONTACT | _CONTACT_PAST | _words("receive receiving hear hearing")
_DESIRE_OBJECTS = (
    _CONTACT
    | _SERVICE
    | _DEMONSTRATIVE
    | _words(
        """
        receive receiving hear any anymore your part recibir mas nada sus tus seguir ningun
        ninguno ninguna recevoir plus receber mais contacted texted called messaged emailed
        bothered
        """
    )
) - {"it", "that", "all"}
_NEGATION = _words("not no never nunca jamas nao ne pas nor ni nada")
# Words allowed between a negation and a contact word: "do not EVER text me".
_BETWEEN = _words(
    """
    me us you ever even please kindly again more further longer any anymore just to be being
    nos le les te lo los la mas vuelvan vuelvas vuelva vuelvo a por
    favor ya m plus pas mais another single fucking freaking effing frickin damn try dare
    these your those my this number from going gonna other mi sus nunca otra vez jamais ni un
    une de des the want wanna at all tu su ou waste time esten este estes anden ande andes sigan
    siga sigas vayan continuen continue sigue sigues accept acepto aceptamos autorizo allow
    """
)
# "not" negates an imperative or a wish after these ("can you not", "to not").
_NOT_AFTER = _words(
    """
    do you please to just kindly should shall must and but so ok okay would will i we
    may might pls ever absolutely definitely certainly really thanks no yes anymore also por
    favor ya que porque pero y es dont
    """
)
_PESTER = _words(
    """
    bother bothering bothered bug bugging pester pestering pestered harass harassing harassed
    harassment annoy annoying annoyed hound hounding nag nagging disturb disturbing spamming
    spammed spammer spamm spams spammy molesten moleste molestes molestar molestarme molestarnos
    molestando molestan fastidien fastidiar fastidiando jodan joder jodiendo chinguen chingar
    acosar acoso acosando acosen harcelement harceler deranger derangez incomodar incomoden
    insist insisting insistan insista insistas insistir insistiendo
    """
)
_REMOVERS = _words(
    """
    remove removed removing delete deleted deleting erase erased unenroll unenrol deregister
    unregister unfollow unlist uninstall scrub purge exclude withdraw borrar borra borren borre
    borrarme
    eliminar elimina eliminen elimine eliminarme quitar quita quiten quitarme sacar saca saquen
    saque sacarme remover remuevan retiren retirar retirarme retirenme retirame supprimer
    supprimez retirez enlevez retirer enlever remova
    removam tirar tirem excluir excluam removal
    """
)
# Spanish imperatives with the pronoun attached: "bórrenme", "sáquenme".
_REMOVE_ME = re.compile(
    r"(borr|elimin|quit|sac|saqu|remuev|remov|desapunt|exclu|baj|retir)\w*(me|nos)$"
)
_LOSERS = _words("lose forget drop wipe toss trash burn olviden")
_TAKERS = _words(
    """
    take get scratch cross strike knock kick pull move keep put remove leave count opt sign let
    check log
    """
)
_INTEREST = re.compile(r"^(interes|intres|intere|interr|intrest)")
_ES_CONTACT = re.compile(
    r"^(?:(?:envi|mand|llam|contact|texte|whatsappe|mensaje|escrib|textee|marqu|lig|envoy|"
    r"ecriv|ecri|appel|contat|mand)"
    r"(?:ar|arme|arnos|arle|arles|e|es|en|eme|enme|enos|ennos|a|as|an|ame|anme|ando|andome|"
    r"ir|irme|irnos|iendo|iendome|ez|er|ent|em|ue|uem|uen|ues|uar|arem|ie|ies|ien|ienme|iar|"
    r"iarme|iame|ia|ias|ian)"
    r")$"
)
_ES_PAST = re.compile(r"(aste|iste|aron|ieron|amos|imos)$")
_ES_WRONG = re.compile(r"^(equivoc|incorrect|errad|errone|erreur|mauvais|faux|fausse|errado)")


def _is_contact(word: str) -> bool:
    return word in _CONTACT or (bool(_ES_CONTACT.match(word)) and not _ES_PAST.search(word))


def _window(words: Sequence[str], start: int, size: int) -> Sequence[str]:
    return words[max(start, 0) : max(start + size, 0)]


def _has_me(words: Sequence[str]) -> bool:
    """Whether the words name the person or their number: me, us, my number."""
    if not _ME.isdisjoint(words):
        return True
    return any(a in _POSSESSIVE and b in _IDENT for a, b in itertools.pairwise(words)) or (
        "number" in words
    )


def _negated(words: Sequence[str], i: int) -> bool:
    """Whether the word at ``i`` is a negation of an imperative or a wish."""
    word = words[i]
    if word == "not":
        return i == 0 or words[i - 1] in _NOT_AFTER
    return word in _NEGATION


def _courtesy_only(clauses: list[list[str]], vocabulary: frozenset[str]) -> bool:
    """Whether the message is one of ``vocabulary`` and nothing but courtesy."""
    words = [w for clause in clauses for w in clause]
    return any(w in vocabulary for w in words) and all(
        w in vocabulary or w in _COURTESY for w in words
    )


# ---------------------------------------------------------------------------
# The rules: each looks at one clause (a list of canonical words).

_STOP_ASIDE = _words(
    """
    by in over off at for and to on en a laughing thinking eating crying smiling worrying light
    lights sign signs button watch gap loss
    """
)
_STOP_ASIDE_KEEP = _words("once good now real ever all me us")
_STOP_PLACE = _words(
    """
    bus train next last first pit truck rest subway metro tram tour one non final a an full
    quick short brief
    """
)


_RECEIVING = _words("receiving getting hearing recieving geting")
# "stop asking for money", "stop begging": soliciting is a message too.
_SOLICITING = _words(
    """
    asking begging selling pushing soliciting pitching offering advertising marketing promoting
    calling texting trying hounding nagging pestering harassing
    """
)
_ES_STOP = _words("parar paren pare para")
_ES_STOP_ASIDE = _words("en a aqui ahi alli frente cerca enfrente por al")
# Who or what "won't stop" when it is the messages: "these won't stop".
_WHO_TEXTS = _words("these they them you this those it")


def _stop_word(words: list[str]) -> bool:
    for i, word in enumerate(words):
        if word not in _STRONG:
            continue
        if _is_contact_clause(words):
            return True
        before = words[i - 1] if i else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        then = words[i + 2] if i + 2 < len(words) else ""
        if word in _ES_STOP and after in _ES_STOP_ASIDE:
            continue  # "paren en la esquina": pull up there
        if word != "stop":
            return True
        if _kept(words, i) and _WHO_TEXTS.isdisjoint(words[:i]):
            continue  # "please don't stop the sale", not "if these don't stop"
        if words[i - 2 : i] in (["put", "a"], ["make", "a"]):
            return True  # "put a stop to this"
        if before in _STOP_PLACE:
            continue
        if (
            before == "not"
            and i >= 2
            and words[i - 2] in {"can", "could", "will", "would", "did", "does"}
            and _WHO_TEXTS.isdisjoint(words)
        ):
            continue
        if after in _STOP_ASIDE and (
            then not in _STOP_ASIDE_KEEP or (after in {"by", "in", "over"} and then not in _ME)
        ):
            continue
        # "stop taking the pills", "stop using the dryer": a verb that is not
        # one of contact, and no messages or person named in the clause.
        if (
            after.endswith("ing")
            and after not in _PESTER | _RECEIVING | _SOLICITING
            and not _has_me(words)
            and _DEMONSTRATIVE.isdisjoint(set(words) - {"it", "that"})
        ):
            continue
        return True
    return False


def _is_contact_clause(words: Sequence[str]) -> bool:
    return any(_is_contact(w) or w in _SERVICE for w in words)


def _ender_with_object(words: list[str]) -> bool:
    for i, word in enumerate(words):
        if word not in _ENDERS or _kept(words, i):
            continue
        ahead = _window(words, i + 1, 4)
        if _has_me(ahead) or any(
            _is_contact(w) or w in _SERVICE or (w in _DEMONSTRATIVE and w not in {"it", "that"})
            for w in ahead
        ):
            return True
        # "I need these texts to end", "I want the alerts cancelled"
        behind = _window(words, i - 4, 4)
        if (
            any(_is_contact(w) for w in behind)
            and (words[i - 1 : i] == ["to"] or {"make", "let"} & set(words[:i]))
            and _DESIRE.union({"make", "let"}) & set(words[:i])
        ):
            return True
        rest = words[i + 1 :]
        before = _window(words, i - 3, 3)
        if all(w in _COURTESY for w in rest) and (
            {
                "want",
                "wish",
                "need",
                "like",
                "to",
                "please",
                "i",
                "we",
                "just",
                "how",
                "can",
                "quiero",
                "deseo",
                "favor",
                "necesito",
                "must",
                "gotta",
                "going",
                "let",
                "so",
            }
            & set(before)
        ):
            return True
    return False


def _enough(words: list[str]) -> bool:
    for i, word in enumerate(words):
        if word in _ENOUGH:
            ahead = _window(words, i + 1, 3)
            if {"already", "with", "of", "de", "ya", "is", "please", "stop"} & set(ahead) or any(
                _is_contact(w) for w in ahead
            ):
                return True
            if (
                i
                and words[i - 1] in {"ya", "had", "enough", "ok", "okay"}
                and (not ahead or ahead[0] in _COURTESY)
            ):
                return True
    return False


_MORE = _words("more further mas plus mais longer")
# Spanish pronouns between "no" and a verb: "no me contacte" is a verb, not a noun.
_CLITICS = _words("me nos le les te lo los la vuelvan vuelva vuelvas a")
_WITH_WHOM = _words(
    "with you businesses business companies company strangers people numbers anyone marketers"
)
# Words after send / call / write that make them everyday errands: "don't send
# the tech until Monday", "do not call before noon".
_ERRANDS = _words(
    """
    the a an before after until till during at on in when while tonight today tomorrow him
    her his it yet back first
    """
)
_AFTER_NO_NOUN = (
    _COURTESY
    | _CONTACT
    | _words(
        """
        from to this number me us for ever again anymore any kind sort more or and nor at after
        before during on by whatsoever whatsoever ever period
        """
    )
)


def _negated_contact(words: list[str]) -> bool:
    for i in range(len(words)):
        if not _negated(words, i):
            continue
        # "no need to text me": not "no need to call, text is fine".
        if (
            words[i : i + 3] == ["no", "need", "to"]
            and (_keep := 1 if words[i + 3 : i + 4] in (["keep"], ["continue"]) else 0) >= 0
            and _is_contact(words[i + 3 + _keep] if len(words) > i + 3 + _keep else "")
            and words[i + 4 + _keep : i + 5 + _keep]
            and (
                words[i + 4 + _keep] in _ME | _POSSESSIVE | _MORE
                or words[i + 4 + _keep] in {"anymore", "again", "to", "out", "ever"}
            )
        ):
            return True
        # "I don't text much" tells a habit; "I don't text with businesses" refuses.
        if (
            i >= 2
            and words[i - 2 : i] in (["i", "do"], ["we", "do"])
            and i + 1 < len(words)
            and _is_contact(words[i + 1])
            and _WITH_WHOM.isdisjoint(words[i + 2 :])
        ):
            continue
        j = i + 1
        while j < len(words) and j - i <= 4 and words[j] in _BETWEEN:
            j += 1
        if j >= len(words):
            # "no more", "not anymore", "no more please": nothing left to name.
            if words[i] in {"no", "nunca"} and any(
                w in {"more", "further", "mas", "plus", "mais"} for w in words[i + 1 : j]
            ):
                return True
            continue
        word = words[j]
        if (
            word in {"send", "call", "write"}
            and j + 1 < len(words)
            and words[j + 1] in _ERRANDS
            and not _is_contact(words[j + 2] if j + 2 < len(words) else "")
        ):
            continue  # "don't send the tech until Monday", "do not call before noon"
        if _is_contact(word) and word not in {"contacto"}:
            if (
                words[i] != "no"
                or word not in _CONTACT
                or set(words[i + 1 : j]) & (_MORE | _CLITICS)
            ):
                return True
            # "no texts please", not "no reminder came": the noun must end the
            # clause or be followed by courtesy or more of the messages.
            if set(words[j + 1 :]) <= _AFTER_NO_NOUN:
                return True
        if word in _CONTACT_PAST and words[j - 1] in {"be", "being", "get", "getting", "been"}:
            return True
        if (
            word in _PESTER
            and not (i and words[i - 1] in {"does", "did", "will", "would", "is", "was"})
            and words[j + 1 : j + 2] not in (["sign"], ["mode"], ["setting"], ["is"])
        ):
            return True

        if (
            words[i] in {"no", "nunca"}
            and words[i + 1 : j]
            and words[i + 1] in {"more", "further", "mas", "plus", "mais"}
            and (word in _DEMONSTRATIVE or word in {"of", "de", "please", "thanks", "thank"})
        ):
            return True
    return False


def _negated_wish(words: list[str]) -> bool:
    for i in range(len(words)):
        # Any negation: "my mom doesn't want these" speaks for another person.
        if words[i] not in _NEGATION or words[i : i + 2] == ["no", "need"]:
            continue
        for j in range(i + 1, min(i + 5, len(words))):
            if words[j] in _DESIRE:
                rest = words[j + 1 : j + 8]
                objects = _DESIRE_OBJECTS if words[j] not in _LIKING else _LIKED
                if not rest or any(w in objects or _is_contact(w) for w in rest):
                    return True
                if re.search(r"\bfrom (you|your|this|them)\b", " ".join(rest)):
                    return True
                break
    return False


def _not_interested(words: list[str]) -> bool:
    for i, word in enumerate(words):
        if _INTEREST.match(word) and any(
            w in _NEGATION or w in {"sin", "zero", "lost", "without"}
            for w in _window(words, i - 4, 4)
        ):
            return True
        if word.startswith(("uninterest", "disinterest", "desinteres")):
            return True
    return False


# The person moved, told in the first person: an address to change, not a
# wish about the messages ("she doesn't live here anymore" still counts).
_MOVED = re.compile(
    r"\b(i|we|i am|we are|m)( \w+)? (no longer|not) (\w+ )?(at|in|live|living|reside|there)\b"
    r"|\b(i|we) do not live (there|here|at)\b"
    r"|\bya no (vivo|vivimos|estoy|estamos|trabajo) (en|ahi|ahi|alli|aqui)\b"
)


def _no_longer(words: list[str]) -> bool:
    text = " ".join(words)
    if _MOVED.search(text):
        return False  # "I'm no longer at that address", "ya no vivo ahí": an address
    if re.search(r"\b(no longer|nunca mas|no mas$|not anymore|never again)\b", text):
        return True
    if re.search(
        r"\bya no (me|nos|les|le|te|mas|quiero|queremos|quieren|deseo|deseamos|necesito|"
        r"necesitamos|interesa|interesan|soy|somos|uso|usamos|tengo|compro|compramos|vive|trabaja|"
        r"es (de|mi|su|el)|gracias|por favor|porfa|please|thanks|$)",
        text,
    ) or any(_is_contact(w) for w in re.findall(r"\bya no (\w+)", text)):
        return True
    # A negation, then "any more" after it: searched from the first negation on, as
    # ``not.*any more`` looked past every negation to the end, in time in the square
    # of a clause's length.
    negation = re.search(r"\b(not|no|never)\b", text)
    if "anymore" in words or (negation and re.search(r"\bany more\b", text[negation.end() :])):
        return any(
            _is_contact(w)
            or w in _DESIRE
            or w in _DESIRE_OBJECTS
            or _INTEREST.match(w)
            or w
            in {
                "customer",
                "client",
                "member",
                "subscriber",
                "patient",
                "lives",
                "use",
                "using",
                "please",
            }
            for w in words
            if w != "anymore"
        )
    french = re.search(r"\bplus (?:de |d )?(\w+)", text)
    if french and _is_contact(french.group(1)):
        return True
    if re.search(r"\b(no|ni) (more|further|mas)\b(?! than| que| de \d)", text):
        after = re.search(r"\b(?:no|ni) (?:more|further|mas) (?:of |de )?(\w+)( \w+)?", text)
        if after is None:
            return True
        word = after.group(1)
        if _is_contact((after.group(2) or "").strip()):
            return True  # "no more sales texts"
        return (
            _is_contact(word)
            or word in _SERVICE
            or word in _DEMONSTRATIVE
            or word in _COURTESY
            or word in {"please", "thanks", "por", "gracias"}
        )
    return False


def _removal(words: list[str]) -> bool:
    text = " ".join(words)
    for i, word in enumerate(words):
        if _REMOVE_ME.search(word) and len(word) >= 6:
            return True
        if word in _REMOVERS:
            before = _window(words, i - 3, 3)
            after = _window(words, i + 1, 4)
            if word in {"deleted", "removed", "erased"} and words[i - 1 : i] in (["i"], ["we"]):
                continue  # "I deleted the email by accident": told, not asked
            # "¿me pueden quitar el cargo?": the Spanish "me" is for whom, the
            # object a thing that is not the messages, the list or the number.
            if after[:1] in (["el"], ["la"], ["los"], ["las"], ["un"], ["una"]) and not (
                set(after[1:2]) & (_SERVICE | _IDENT | _CONTACT)
            ):
                continue
            if _has_me([*before, *after]) or {"be", "been", "being"} & set(before):
                return True
            if re.search(
                r"\b(from|off|de|of|du|da)( (the|your|this|that|ur|su|la|tu|esta|all|our|vos|"
                r"sua|sus|all of))? (service|number|contact)\b",
                " ".join(after),
            ):
                return True
        if (
            word in _LOSERS
            and _has_me(_window(words, i + 1, 3))
            and {"number", "info", "contact"} & set(_window(words, i + 1, 3))
        ):
            return True
        if word in {"off", "out", "fuera"}:
            before = _window(words, i - 4, 4)
            after = _window(words, i + 1, 4)
            if set(before) & _TAKERS and _has_me(before):
                return True
            # "turn off these notifications", "shut off the texts"
            if (
                i
                and words[i - 1] in {"turn", "shut", "switch"}
                and any(_is_contact(w) or w in _DEMONSTRATIVE or w in _SERVICE for w in after)
            ):
                return True
            if word == "out" and i and words[i - 1] in {"want", "me", "us", "opt", "opted"}:
                return True
            # "I want off (the list)", not "I want off at the next stop".
            if (
                word == "off"
                and words[i - 1 : i] == ["want"]
                and set(words[i + 1 :]) <= _COURTESY | _SERVICE
            ):
                return True
        if word in {"salir", "sair", "salirme"} and "service" in _window(words, i + 1, 4):
            return True
        if word == "de" and i + 1 < len(words) and words[i + 1] == "baja":
            return True
        if word == "opt" and "out" in _window(words, i + 1, 3):
            return True
    if re.search(
        r"\b(off|out of|fuera de|salir de|sair da|sair de)( (the|your|this|that|ur|all|these|"
        r"those|su|la|tu|esta|sus|de|of))* service\b",
        text,
    ):
        return True
    # "scratch my name from your records", "drop me from your database"
    if re.search(
        r"\b(take|scratch|drop|get|remove|delete|erase|purge|lose|strike|cross|wipe|pull|kick|"
        r"leave|keep)\b (me|us|this number|(my|our) \w+( \w+)?) (from|out of|outta)\b",
        text,
    ):
        return True
    # Spanish "dejen de escribirme", "deja de mandar", "para de llamarme"
    for match in re.finditer(
        r"\b(?:dej\w*|para|pare|paren|parar|parale|parenle) (?:ya )?(?:de|d) ((?:\w+ )?\w+)", text
    ):
        if any(_is_contact(w) or _PESTER_STEM.match(w) for w in match.group(1).split()):
            return True
    return False


_PESTER_STEM = re.compile(
    r"^(molest|acos|fastidi|jod|ching|freg|harass|bother|bug|pester|spam|pedir|pidiendo)"
)


# Words of aversion that take the messages as object: "refrain from texting
# me", "I'd rather not get these", "sick of these texts".
_AVERSION = _words(
    """
    refrain avoid tired sick fed hate dislike annoyed annoying irritating overwhelming excessive
    harto harta cansado cansada odio marre chill abstener abstenerse abstenganse abstengase
    abstente absteneos worst terrible awful horrible pointless useless unnecessary intrusive
    invasive obnoxious ridiculous irrelevant creepy relentless nonstop constant endless nuisance
    unwelcome waste stupid dumb pesados pesadas fastidio fastidiosos molestos molestas canse
    cansamos cansados cansadas hartos hartas hartaron cansaron aburrido aburrida aburren
    """
)


def _aversion(words: list[str]) -> bool:
    for i, word in enumerate(words):
        if (
            word in {"prefer", "rather"}
            and "not" in words[i + 1 : i + 7]
            and any(
                _is_contact(w) or w in {"receive", "get", "getting", "receiving", "hear"}
                for w in words[i + 1 :]
            )
        ):
            return True
        # "texts not welcome", "you're not allowed to text me"
        if (
            word
            in {
                "welcome",
                "allowed",
                "permitted",
                "authorized",
                "authorised",
                "okay",
                "ok",
                "acceptable",
                "appropriate",
                "alright",
                "cool",
            }
            and "not" in _window(words, i - 2, 2)
            and any(_is_contact(w) for w in _window(words, i - 6, 11))
        ):
            return True
        if word in _AVERSION:
            around = [*_window(words, i - 3, 3), *_window(words, i + 1, 5)]
            if any(_is_contact(w) for w in around) or (
                "not" in around and {"receive", "get", "getting", "receiving", "hear"} & set(around)
            ):
                return True
            # "sick of getting these", "tired of receiving them"
            ahead = _window(words, i + 1, 5)
            if _RECEIVING & set(ahead) and {"these", "those", "them", "this", "it"} & set(ahead):
                return True
    return False


def _complaint(words: list[str]) -> bool:
    text = " ".join(words)
    if re.search(
        r"\b(leave|let|leav) (me|us|my \w+|this number)( \w+){0,3} (alone|be)\b"
        r"|\b(go away|get lost|shut up|buzz off|back off|piss off|bugger off|sod off|bog off)\b"
        r"|\b(fuck|f|fck|fuk|fk|eff|frick|frig|screw|fkn|fucking|fuckin) "
        r"(off|you|yourself|this|these|them|that|all|your)\b"
        r"|\b(stfu|gtfo|gfy|fuckoff|fu)\b|\bgo to hell\b"
        r"|\b(tcpa|fcc|ftc|dnc|lawsuit|unsolicited|unsolicitated|harass\w*)\b"
        r"|\bdo not call\b(?! (before|after|until|till|during|at|on|in|when|while|tonight|today|"
        r"tomorrow|him|her|it|yet|back|first|the)\b)"
        r"|\bsue (you|your|them|the|this)\b|\bsuing\b"
        r"|\b(report|reporting|reported) (you|them|yall|this number|your number|your company|"
        r"these|notice|as|to the|to fcc|to my)\b(?! sent| gave| made| did| had)"
        r"|\b(block|blocking|blocked)( \w+)? (you|them|these|your|this number|number|sender|"
        r"notice|text|message)\b"
        r"|\b(denunciar|reportar|bloquear|demandar)(los|les|te|lo)?\b"
        r"|\b(los|les|te|lo|la) (\w+ )?(report|denunci|demand)\w*"
        r"|\b(contact|talk to|speak to|speak with|talk with|call|direct \w+ \w+ to|hearing from|"
        r"hear from|go through|deal with) (my|our) (lawyer|attorney|counsel|abogado|abogada)\b"
        r"|\battorney general\b|\bsee you in court\b|\b(i|we) (will|ll|am going to|m going to|"
        r"going to) sue\b|\brepresented by (counsel|an attorney|a lawyer)\b"
        r"|\b(hablen|hable|habla|comuniquense|contacten|llamen) (con|a) (mi|nuestro) "
        r"(abogado|abogada)\b"
        r"|\bunwanted\b|\binvasion of (my |our )?privacy\b"
        r"|\b(this is|it s|es|son|you are|you re|your|ur|youre) (a |an |un |una |unos |unas |"
        r"puro |pura |just |such a )?(scam|scammer|scammers|estafa|estafadores|fraud|fraude)\b"
        r"|\b(scammers|estafadores|nice try)\b"
        r"|\b(los|les|te|lo|la) (\w+ )?bloque\w*|\bbloque\w* (este|su|el|tu) number\b"
        r"|\b(do not|never|no|dont)\b( \w+){0,4} (by|via|over|through) (text|message|email)\b"
        r"|\bbe (the|my|your) (last|final) (text|message|one)\b"
        r"|\bya chole\b"
        r"|\bno (me |nos )?(agreguen|agregues|agregue|incluyan|inscriban|suscriban|pongan|anoten)"
        r"\b"
        r"|\b(done|finished|through) with (you|this|these|them|your|notice|text|"
        r"message|service)\b"
        r"|\b(you|they|i|we|people|still|why) (\w+ )?(keep|keeps|kept|keeping|continue|continues)"
        r" (\w+ ){0,2}(text|message|call|email|contact|send|write|notice|getting|receiving|"
        r"bothering)\b"
        r"|\bstill (\w+ ){0,2}(text|message|call|email|contact|send|write|notice|getting|"
        r"receiving|bothering)\b"
        r"|\bwhy (am i|do i) (\w+ ){0,2}(getting|receiving)\b"
        r"|\bwhy (are|r) you (\w+ )?(text|message|contact|send|call|email|write|notice|spam) "
        r"(me|us|this|my)\b"
        r"|\b(how|why|where) (\w+ )?(did|do|does|have|has|would|could)? ?(you|they) (\w+ ){0,2}"
        r"(get|got|find|found|obtain|obtained|have|has) (my|this) (number|info)\b"
        r"|\bwho (\w+ )?(gave|give|gives|sold|shared|passed|provided) (you|them) (my|this) "
        r"(number|info)\b"
        r"|\b(como|donde|quien|por que|porque) (\w+ ){0,2}(consiguieron|obtuvieron|sacaron|dio|"
        r"dieron|paso|"
        r"pasaron|tienen|tiene|consiguio|obtuvo) (mi|este) (number|info)\b"
        r"|\b(dej\w*|laiss\w*|fich\w*|fout\w*|deix\w*)( \w+)? (en paz|tranquil\w*|la paix)\b"
        r"|\b(knock|cut) (it|this|that) (off|out)\b"
        r"|\bcease\b|\bdesist\b",
        text,
    ):
        return True
    if re.search(r"\bforget (about )?(me|us)\b", text) and not re.search(r"\bnot forget", text):
        return True
    if re.search(r"\bspam\w*\b", text):
        return not re.search(r"\b(spam|notice) (folder|filter|box)\b|\bin (my|the) spam\b", text)
    for i, word in enumerate(words):
        if word in _PESTER:
            before = _window(words, i - 2, 2)
            if {"does", "did", "will", "would", "not"} & set(before) and "do" not in before:
                continue
            if word.startswith(("harass", "spam", "acos")) or _has_me(
                [*before, *_window(words, i + 1, 2)]
            ):
                return True
    return False


def _never_consented(words: list[str]) -> bool:
    text = " ".join(words)
    if re.search(r"\byet\b", text):
        return False
    return bool(
        re.search(
            r"\b(never|did not|do not|have not|has not|i not)( \w+){0,2} (sign up|signed up|"
            r"signup|sign me up|subscribe|agree to|agreed to|consent|consented|authorize|"
            r"authorized|authorise|authorised|optin|opt in|opted in|enroll|enrolled|"
            r"register for|registered for|give (you )?permission|gave (you )?permission)\b"
            r"|\b(you|u|they|yall) (\w+ ){0,3}(no|not|never) (\w+ ){0,2}(permission|consent|"
            r"authorization)\b"
            r"|\b(no|without) (my |our |any )?(permission|consent|authorization|authorisation)\b"
            r"|\b(not|never) (\w+ ){0,2}(give|gave|given|grant|granted|provide|provided) "
            r"(\w+ ){0,2}(permission|consent|authorization)\b"
            r"|\b(not|never) (have|give|gave) (my|our) (permission|consent)\b"
            r"|\b(not|never) (give|gave|given|provide|provided|share|shared) (you |them |yall )?"
            r"(my|this|our) (number|info)\b"
            r"|\b(not|never) (\w+ ){0,2}(ask for|asked for|request|requested)( \w+)? "
            r"(this|these|that|them|notice|text|message|any|your)\b"
            r"|\b(consent|permission|authorization|authorisation) (is |hereby |now )?(withdraw\w*|"
            r"rescind\w*|retract\w*|remov\w*|cancel\w*|denied|revoke\w*|terminated|ended)\b"
            r"|\b(withdraw|rescind|retract|remove|cancel|revoke)( \w+){0,2} "
            r"(consent|permission|authorization|authorisation)\b"
            r"|\b(no|nunca) (me |les |le )?(subscribe|inscrib\w*|autoriz\w*|autoric\w*|"
            r"registr\w*|consenti\w*|consiento|acepte)\b"
            r"|\bno (les |le |te )?(di|dio|he dado|dimos|doy|damos|tienen|tiene|tienes|cuentan con)"
            r" (\w+ )?(\w+ )?(permiso|consentimiento|autorizacion)\b"
            r"|\b(take|taking|took|takes) back (my |our |the )?(consent|permission|authorization|"
            r"ok|okay|yes)\b"
            r"|\bsin (mi )?(permiso|consentimiento|autorizacion)\b",
            text,
        )
    )


_PERSON_NOUNS = (
    "number|person|guy|girl|lady|man|one|people|name|individual|recipient|contact|"
    "woman|dude|family|no|num|nr|numbr|persona"
)


def _wrong_person(words: list[str]) -> bool:
    text = " ".join(words)
    if re.search(r"\b(i|we) (\w+ )?(sent|send|texted|messaged|text|meant)\b", text):
        return False  # "sorry, I sent that to the wrong person"
    if _MOVED.search(text) and "wrong" not in words:
        return False  # "I don't live there anymore, can you update my address?"
    return bool(
        re.search(
            rf"\bwrong (\w+ )?({_PERSON_NOUNS})\b"
            rf"|\bnot (the )?(right|correct|intended) ({_PERSON_NOUNS})\b"
            r"|\b(have|got|has|had|the|texting|messaging|contacting|dialed) wrong$"
            r"|^wrong$"
            r"|\b(not|no) ((actually|even|really|longer|anymore|es|is) )?(my|his|her|their|mi|su|"
            r"the right|the correct|correct|"
            r"right) (\w+ )?number\b"
            r"|\b(do|i|we) not know (you|anyone|anybody|him|her|them|who this|who you)\b"
            r"|\bno (one|body) (here|by|named|with|lives|called)\b|\bnobody (here|by|named)\b"
            r"|\bnot (live|lives|living) (here|there|at)\b|\b(passed away|deceased)\b"
            r"|\bnot (a|an|your|the) (\w+ )?(customer|client|member|patient|subscriber)\b"
            r"|\bnumber( \w+){0,6} (someone|somebody) else\b|\bnumber (\w+ ){0,3}belongs\b"
            r"|\b(someone|somebody) else s number\b"
            r"|\bnot (\w+ )?(my|his|her|mi|su) (info|number)\b"
            r"|\b(meant|mean|looking for|want|wanted|trying to reach) (someone|somebody) else\b"
            r"|\b(es|soy) otra persona\b"
            r"|\bno soy\b|\bno (lo|la|los|las|te|les)? ?conozco\b"
            r"|\bnumber (\w+ )?(incorrect\w*|errad\w*|erron\w*|equivoc\w*)\b",
            text,
        )
    ) or any(
        _ES_WRONG.match(w)
        and ("number" in words or len(words) <= 4 or {"persona", "se"} & set(words))
        for w in words
    )


def _kept(words: Sequence[str], i: int) -> bool:
    """Whether the ender at ``i`` is told not to happen: "please don't cancel"."""
    return words[max(i - 2, 0) : i] == ["do", "not"] or words[i - 1 : i] == ["never"]


def _short_ender(clauses: list[list[str]], *, question: bool) -> bool:
    words = [w for clause in clauses for w in clause]
    if len(words) <= _SHORT_MESSAGE_WORDS and any(
        w in _ENDERS - {"stopped", "kill", "cut"} and not _kept(words, i)
        for i, w in enumerate(words)
    ):
        return True
    # "Don't!", "please don't": a bare negation answers the texts themselves.
    if "not" in words and set(words) <= _COURTESY | {"not", "do", "please", "no", "nope"}:
        return "do" in words
    # "Please no", "no por favor": a refusal pleaded, not a bare "no" answering a question.
    if set(words) <= _COURTESY | _NO and _NO & set(words) and {"please", "favor"} & set(words):
        return True
    # "Not wanted.", "this is not welcome": the texts judged unwelcome, nothing else said.
    said = set(words)
    if "not" in said and said & _UNWELCOME and said <= _COURTESY | _UNWELCOME | {"not"}:
        return True
    # "I'm done", "we're so done": quitting said of oneself ("Done!" alone confirms a task).
    if (
        "done" in words
        and {"am", "are", "m", "re"} & set(words)
        and set(words) <= _COURTESY | {"done", "so", "totally", "officially", "we", "re"}
    ):
        return True
    # "No thanks", "no thank you, I'm good", "hard pass": declining, and nothing else.
    # ("No, that's all, thanks" answers "anything else?").
    if (
        set(words) <= _COURTESY | _DECLINING | _DECLINED
        and "that" not in words
        and (
            "pass" in words
            or (_NO & set(words) and _THANKS & set(words))
            # "nah I'm good", "no, we're all set": a refusal, not "I'm good, how are you?"
            # ("no, I'm good for now" only declines this once).
            or (_NO & set(words) and {"am", "m", "are", "re"} & set(words) and "now" not in words)
        )
    ):
        return True
    # "no never", "not now, not ever", "hell no": a refusal for good, nothing else.
    if set(words) <= _COURTESY | _NO | _REFUSALS and (
        {"never", "ever"} & set(words)
        or ({"hell", "heck", "f", "fuck"} & set(words) and _NO & set(words))
    ):
        return True
    # "I'm all set, thanks": nothing more wanted ("all set for tomorrow" says more).
    if (
        {"all", "set"} <= set(words)
        and {"am", "m", "are", "re"} & set(words)
        and set(words) <= _COURTESY | _DECLINING | {"we", "re"}
    ):
        return True
    # "Don't need it", "I don't want them": refusing the thing offered, nothing else.
    if (
        "not" in words
        and {"need", "want"} & set(words)
        and set(words) <= _COURTESY | {"not", "do", "need", "want", "it", "them", "any", "one"}
    ):
        return True
    # A question may wonder ("Enough?", "Is this a scam?") rather than complain, and
    # "good enough" or "fair enough" agrees.
    asking = _ENOUGH | _SUSPICION if question else frozenset()
    if re.search(r"\b(good|fair|close|sure|well|big|long|old|soon|easy) enough\b", " ".join(words)):
        asking |= _ENOUGH
    if _courtesy_only(
        clauses, (_ENDERS | _ENOUGH | _STRONG | _ALONE_COMPLAINTS | {"out", "leave"}) - asking
    ):
        return True
    # One clause of nothing else in a longer message: "This is a business line, remove."
    # "every day?? enough": a last clause of "enough" that is not a question.
    return any(_courtesy_only([clause], _ENDERS | _REMOVERS) for clause in clauses) or (
        not question and _courtesy_only(clauses[-1:], _ENOUGH - asking)
    )


_NO = _words("no nope nah non nao")
_THANKS = _words("thanks thank thankyou gracias merci obrigado obrigada")
_DECLINING = _NO | _THANKS | _words("pass hard not interested good fine set ill all estoy but pero")
# What a decline may name: "daily texts? no thanks".
_DECLINED = _CONTACT | _SERVICE | _words("daily weekly more these any your")
_SUSPICION = _words("scam scammer scammers estafa")
_REFUSALS = _words("never not now ever hell heck f fuck and way nah nope")
_UNWELCOME = _words("welcome wanted needed appreciated necessary requested")


# Words that complain by themselves in a message of nothing else: "Blocked.",
# "Reported and blocked", "spam".
_ALONE_COMPLAINTS = (
    _words(
        """
        blocked reported blocking reporting spam scam scammer scammers unsubscribed bloqueado block
        bloqueados denunciado reportado report estafa estafadores pass dejenme dejeme dejame
        dejennos dejanos
        """
    )
    | _REMOVERS
)


_SHORT_MESSAGE_WORDS = 4

_CLAUSE_RULES: tuple[Callable[[list[str]], bool], ...] = (
    _stop_word,
    _ender_with_object,
    _enough,
    _negated_contact,
    _negated_wish,
    _not_interested,
    _no_longer,
    _removal,
    _complaint,
    _never_consented,
    _wrong_person,
    _aversion,
)


def reads_like_an_opt_out(text: str) -> bool:
    """Whether ``text`` could be read as a wish to receive no more messages (see
    the module docstring), with or without a signature below it."""
    unsigned = _SIGNATURE.sub("", text)
    return _reads_like(text) or (unsigned != text and _reads_like(unsigned))


def _reads_like(text: str) -> bool:
    plain = _plain(text)
    if _NOT_THAT_PERSON.search(unicodedata.normalize("NFKC", text.translate(_BEFORE_NFKC))):
        return True
    if _OTHER_LANGUAGES.search(_fold(text)) or _OTHER_LANGUAGES.search(plain):
        return True
    if _letters(text) in _OTHER_LANGUAGE_REPLIES:
        return True
    clauses = _clauses(plain)
    if _short_ender(clauses, question=plain.rstrip().endswith("?")):
        return True
    if _MESSAGE_RULES.search(plain) or _gap_rule(plain):
        return True
    return any(rule(clause) for clause in clauses for rule in _CLAUSE_RULES)


# The commonest ways to say stop or unsubscribe in languages read no further:
# Chinese, Japanese, Korean, Russian, Vietnamese, Tagalog, Haitian Creole,
# German, Italian, Arabic. Matched in the folded text (kana keep their marks)
# and in the plain one (Vietnamese without its accents).
_OTHER_LANGUAGES = re.compile(
    r"停止|退订|退訂|取消订阅|取消訂閱|不要再发|不要再發|别再发|別再發|不要发|不要發|别发|勿扰|"
    r"勿打扰|勿打擾|"
    r"配信停止|送らないで|送信しないで|受信拒否|登録解除|配信不要|"
    r"수신거부|수신 거부|그만 보내|보내지 ?마|그만해|구독 ?취소|구독 ?해지|"
    r"\bстоп\b|отпис|хватит|не пишите|не присылайте|удалите (мой )?номер|прекратите|"  # noqa: RUF001
    r"\b(ngung|dung|ngung lai) gui\b|\bhuy (dang|đang) ky\b|\bkhong muon nhan\b|"
    r"\b(dung|đung) nhan (tin|nua)\b|\bkhong nhan tin\b|\bđừng (nhắn|gửi)\b|"
    r"\btigil\b|\btumigil\b|\btama na\b|\b(huwag|wag) (nyo |mo |po )?na\b|\bayoko na\b|"
    r"\bsispann\b|\bpa voye\b|\bpa vle (okenn |ankò |anko )?mesaj\b|"
    r"\bstopp\b|\babmelden\b|\babbestellen\b|\bkeine (sms|nachrichten) mehr\b|"
    r"\bnicht mehr (schreiben|anschreiben|kontaktieren|senden)\b|\bhör(en sie|t)? auf\b|"
    r"\b(me )?tir(e|a|em)(-me)? da (sua )?lista\b|"
    r"\bcancellami\b|\bnon (scrivermi|mandatemi|mandate|inviate|scrivetemi|contattatemi)\b|"
    r"\bdisiscriv|\brimuovimi\b|\bnon voglio più messaggi\b|\bnon voglio piu messaggi\b|"
    r"توقف|الغاء الاشتراك|إلغاء الاشتراك|أوقف|اوقف|لا ترسل|لا تراسل|"
    r"\bcero (mensajes|sms|textos)\b"
)


# A signature a phone or the person adds below the reply: after a line of "--", or a
# last line "Sent from my ...". "取消" or "basta" with one below it is still the whole
# reply, read as if alone.
_SIGNATURE = re.compile(r"\n[ \t]*--[ \t]*\n.*\Z|\n[ \t]*sent from my [^\n]*\Z", re.I | re.S)


def _letters(text: str) -> str:
    """The folded text's letters and digits alone, accents kept."""
    return "".join(ch for ch in _fold(text) if ch.isalnum())


# The same languages' commonest one-word replies for stop, cancel or unsubscribe,
# matched only as the whole reply: inside a sentence they are often about something
# else ("取消订单" cancels an order), and some are names without their accents
# (Vietnamese "Huy", "Dung"), so those are matched with them.
_OTHER_LANGUAGE_REPLIES = frozenset(
    _letters(word)
    for words in (
        "取消 停 停止发送 td",  # Chinese (TD: 退订's letters, "reply TD to unsubscribe")
        "配信解除 解除 ストップ キャンセル アンサブスクライブ 解約 不要 やめて 止めて",  # Japanese
        "중지 해지 수신해지 스톱 거부 그만 탈퇴 불필요",  # Korean
        "отмена отписка отписаться",  # Russian
        "dừng dừng_lại hủy huỷ từ_chối tu_choi ngừng",  # Vietnamese (huỷ: the older accent)
        "hinto pahinto itigil huwag",  # Tagalog
        "anile kanpe",  # Haitian Creole
        "kündigen austragen aufhören",  # German
        "annulla disdici cancella fermati smettila smettetela",  # Italian
        "إيقاف ايقاف إلغاء الغاء ستوب كفى كفاية",  # Arabic
        # Spanish: "stop it" ("para" alone is "for", so only "para ya" and the
        # accented "pará"), "end" (the FIN a Spanish opt-out list offers), "it's over"
        "para_ya pará fin se_acabó",
        "sair",  # Portuguese: the keyword Brazilian senders offer for STOP
    )
    for word in words.split()
)

# "I'm not Kevin", "This isn't Maria", "No soy Juan": a name after a denial, told by
# its capital letter (a message in capitals is left to the other rules).
_NOT_THAT_PERSON = re.compile(
    r"\b(?:I'?m not|I am not|[Tt]his is not|[Tt]his isn'?t|[Tt]his ain'?t|[Ii]t'?s not|"
    r"[Tt]his is not|[Nn]o soy|[Nn]o es|[Nn]ot|[Tt]here'?s no|[Tt]here is no|[Nn]o hay|"
    r"[Ww]rong|[Nn]ingun[ao]?)\s+"
    r"(?!I\b|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|January|February|March|"
    r"April|May|June|July|August|September|October|November|December|OK|Ok)"
    r"[A-Z][a-z]{2,}\b"
    # "No Sheila here": a bare "No" before a name only with where she is not.
    r"|\b[Nn]o\s+[A-Z][a-z]{2,}\s+(?:here|at this number|lives here|aqu[ií])\b"
)


# Rules that need the words as written (the -ing of "texting" is gone from the
# canonical words): "why is this number texting me", "¿por qué me siguen
# escribiendo?", "I told you to stop".
_MESSAGE_RULES = re.compile(
    r"\b(siguen|sigue|continuan) (\w+ )?(escrib|mand|envi|llam|contact|textea|molest)\w*"
    r"|\b(dije|pedi|he dicho|hemos dicho|dijimos) que (no\b|ya no|paren|dejen|pararan|dejaran|"
    r"me borr|me quit|me sac)"
    r"|\b(told|asked) (you|u|ya|yall|y all) (to stop|no\b|not to|already|(\w+ )?times)"
    r"|\bi (said|say) no\b"
    r"|\b(texts?|txts?|messages|msgs|notifications|alerts|emails|calls) (are |is )?"
    r"(too|so|way too) (many|much|often|frequent)\b"
    r"|\bya no\s*([.,!]|$)|\bya estuvo\b"
    r"|\b(you|your|you are|u r|ur|youre|you re) (so |really |very |super |fucking )?"
    r"(annoying|irritating|a pest|a nuisance|harassing|creepy|spam|spammers?)\b"
    r"|\b(these|those|they|them|the texts|the messages|your texts|your messages|ur texts) "
    r"(are|r|re) "
    r"(so |really |very |super |getting |fucking |kinda |pretty |just )?(annoying|irritating|"
    r"a nuisance|spam|too much|useless|pointless|excessive|harassment)\b"
    # Each \W* run here is read once: two side by side, or after "?+", would try every
    # split of a long run of spaces or marks, in time the square of its length.
    r"|^\W*((ugh|omg|seriously|wow|so|this is|that is|thats|its|it s|how)\W*)?(so |really |very )?"
    r"(annoying|irritating|not again|this again|again\?)\W*$"
    r"|\b(no|not any|zero) (use|need) for (these|those|them|this|your|ur|any|the) ?(texts?|"
    r"messages|msgs|txts|promos|alerts|offers|stuff)?\b"
    r"|\bhow many (more )?times (do|does|must|will|should|have|did|am) (i|we) (\w+ ){0,3}(ask|say|"
    r"tell|repeat|reply|respond|text|write)\b"
    r"|\bgive it a rest\b"
    r"|\b(so|totally|completely|am|m) over (these|this|your|the|ur|it|you)\b"
    r"|\bnot the (\w+ )?(person|one|guy|girl|lady|man|woman|individual|customer|contact) "
    r"(you|u)\b"
    r"|\b(nobody|no one|noone|no body) (asked|wants|cares|needs)\b"
    r"|\b(get|stay|keep|go|step) (off|out of|outta|away from) (my|this) (phone|cell|number|line|"
    r"inbox|texts|messages|dms)\b"
    r"|\bblow\w* up (my|this) (phone|cell|number|line)\b"
    r"|\b(be|been|being|get|got|gotten) (taken|removed|deleted|erased|unsubscribed|dropped)"
    r" ?(off|out|from|$)"
    r"|\b(number|numero) (\w+ ){0,2}(ya )?no es (de|mi|su|el|mio|mia|nuestro|correcto)\b"
    r"|\b(turn|shut|switch) (these|this|them|those|the (texts?|messages|alerts|notifications))"
    r" off\b"
    r"|\b(text|txt|message|msg|contact|call|email)(ing)? (me|us) less\b"
    r"|\bonly (text|txt|message|msg|contact|call|email) (me |us )?(if|when|for|in)\b"
    r"|^\W*ya,? (por favor|porfa|please)\W*$"
    r"|\b(why|how|who) (\w+ ){0,3}(on|in|to|onto) (this|your|the|that|ur|these|a) (list|lists|"
    r"mailing list|texting list|database|program)\b"
    r"|\b(not|never) (remember|recall|recollect) (\w+ )?(sign|signing|signed|subscrib\w*|"
    r"opting|opted|agree\w*|giving|joining|registering)\b"
    r"|\b(never|not) (been |ever been |one of )?(a |an |your |their |ur )?(\w+ )?(customer|"
    r"client|member|patient|subscriber)s?\b"
    r"|\b(no|nunca) (he sido |soy |somos |hemos sido |fui )?(su |sus )?(cliente|clientes|"
    r"paciente|pacientes|socio|socia|miembro)\b"
    r"|^\W*(can|could|would) (you|u|ya) (just |please |pls |plz )*not\W*$"
    r"|\b(get rid of|rid of) (me|us|my \w+|this number|our \w+)\b"
    r"|\b(not|never|stop|quit|no|nunca) (\w+ )?(use|using|usar|usen|utilizar|utilicen) (my|this|mi|"
    r"este|"
    r"our|nuestro) (cell |cell phone |phone |mobile )?(number|numero|phone|cell|telefono|celular|"
    r"info|informacion|datos)\b"
    r"|\b(number|numero|phone|cell|line|telefono|celular) (is|es) not (for|para) (marketing|sales|"
    r"ads|advertising|promotions|promociones|publicidad|ventas|texts|mensajes)\b"
    r"|\b(dej\w*|para|pare|paren) de (usar|utilizar) (mi|este|nuestro) (numero|telefono|celular)\b"
    r"|\bpass on (the |these |your |all |any )?(texts?|txts?|messages|msgs|offers|deals|promos|"
    r"alerts|emails|calls)\b"
    r"|\bnot (supposed|allowed|permitted|meant|authorized) to (text|txt|message|msg|contact|call|"
    r"email|send|write)"
    r"|\bknock (it |that |this )?off (the |these |your |with the )?(texts?|messages|calls|spam)\b"
    r"|\bhad it with\b|\bsick and tired\b"
    r"|\b(good|ok|okay|fine|all set|set) (on|without) (the |these |your |ur |any )?(texts?|txts?|"
    r"messages|msgs|calls|emails|alerts|notifications|promos|reminders)\b"
    r"|\b(good|ok|okay|fine|set) (on|without) (these|those|them|em|this stuff|all this)\b"
    r"|\ball set with (these|those|them|em|the (texts?|messages|alerts|notifications)|your|ur)\b"
    r"|\bpass on (these|those|them|em|all (of )?(this|these|that))\b"
    r"|\b(get|take|keep|remove|delete) (\w+ ){0,2}(off|out of|outta|away from|from) (my|this) "
    r"(phone|cell|number|line|inbox)\b"
    r"|\b(how|can|could|want to|wanna|let me|i need to|i d like to) (\w+ ){0,3}(leave|exit|"
    r"get out of|get off|unjoin|quit) (this|these|it|here|"
    r"the (list|group|chat|program|texts|messages)|"
    r"your (list|group|chat|program|texts|messages))\W*$"
    r"|\b(leave|exit|unjoin) (this|the|your|ur) (list|group|chat|program|texting list|mailing list|"
    r"text list|club)\b"
    r"|\brm (me|us|my (number|info|name))\b"
    r"|\btoo many (of )?(these|those|them|em)\b"
    r"|^\W*spare me\b|\bspare me (the|these|your|ur|all) "
    r"|^\W*save it\W*$|\bsave (your|ur|the) (texts?|messages|msgs|promos|deals|offers|breath)\b"
    r"|\bkeep (your|ur) (\w+ )?(texts?|messages|msgs|promos|deals|offers|ads|coupons|spam)"
    r"( to (yourself|yourselves|urself))?\W*$"
    r"|\b(to|d|would|wanna) (never|not) (get|receive|see|hear|getting|receiving) (these|those|them|"
    r"your|ur|any more|another|from you|texts|messages)\b"
    r"|\bnot (tryna|trynna|trying to) (get|receive|hear|see|be on)\b"
    r"|^\W*(keep away|step off|back off|buzz off)\b"
    r"|\bno (sigan|siga|sigas|continuen)( con (esto|eso|los mensajes|sus mensajes|estos mensajes|"
    r"lo mismo))?\W*$"
    r"|\bno (me |nos )?(llegue|lleguen) (mas|nada|sus|esto|publicidad|mensajes|promociones)\b"
    r"|^\W*(ya )?(fue|es|ha sido) (suficiente|bastante|demasiado)\W*$"
    r"|\bdemasiad[oa]s (mensajes|msjs|textos|promociones|llamadas)\b"
    r"|\bno (me|nos) (gusta|gustan|agrada|agradan) (recibir|sus|tus|estos|los|que me)\b"
    r"|\bhow many more (of (these|those|them|your|ur)|texts?|messages|msgs|txts)\b"
    r"|\bforget (i|we) (exist|existed|exists)\b"
    r"|\bzero (more )?(texts?|txts?|messages|msgs|contact|calls|emails|promos)\b"
    r"|^\W*who (even )?(asked|cares)\W*$"
    r"|\bwho (told|asked|allowed|said|let) (you|u|y all|yall) (to|could|can) (text|txt|message|msg|"
    r"contact|call|email|write)"
    r"|\bhow is (this|that|it|texting me) (even )?legal\b"
    r"|\b(this|that|it|these|texting me|your texts) (should be|is|are|s|seems|must be) "
    r"(so |totally )?(illegal|against the law)\b"
    r"|\b(salir|salgo|salirme|salimos|me salgo|quitarme|me quito|sacarme|me saco)( \w+)? de "
    r"(esto|esta lista|la lista|su lista|tu lista|aqui|aca|este grupo|estos mensajes|sus mensajes|"
    r"esta cosa|este servicio|su servicio)\b"
    r"|\bno recibir (mas|nada|mensajes|sus|estos|esos|textos|promociones|publicidad)\b"
    r"|\b(am|m|re|are) (so |totally |just )?done (getting|receiving|reading|hearing|with these)\b"
    r"|^\W*(this is |it s |its |pure |just |more |what )?(junk|garbage|trash|crap|bs)"
    r"( mail| texts?| messages?| again)?\W*$"
    r"|\b(text|txt|bother|message|msg|spam|call|try|find|pick|contact|harass|annoy|pester) (\w+ )?"
    r"(someone|somebody|some one|sombody) else\b"
    r"|\b(pick|try|dial|find|use) (a |another )?(different|other|new) (number|person|victim)\b"
    r"|\b(invad\w*|invasion (of|a|de)) (my |mi |of my |a mi |de mi )?(privacy|privacidad)\b"
    r"|\b(respect|respeten|respete|respeta|respetar) (my|mi) (privacy|privacidad|wishes|decision|"
    r"request|deseo|deseos|peticion|solicitud)\b"
    r"|\b(number|numero) (\w+ ){0,4}(not|no) (for |para )?(ads|advertising|marketing|promos|"
    r"promotions|publicidad|promociones|spam)\b"
    r"|\bchanged? (my|our) mind (about|on) (these |those |the |your |ur |getting |receiving )?"
    r"(texts?|messages|msgs|alerts|promos|subscription|list|this|these)\b"
    r"|\b(muting|muted|mute) (you|u|this|these|them|your|ur|y all|yall)\b"
    r"|\b(do not|don t|dont|never)([ ,]+(ever|even|you|u|dare|think|about|try|trying|bother|"
    r"again|please|pls|kindly|just|go|be)){1,4}[ ,]+(text|txt|message|msg|contact|call|email|"
    r"write|spam|ping)\w* (me|us)\b"
    r"|\b(not|ni) (one|uno|una|un) (more|mas|single)( (text|txt|message|msg|mensaje|msj)\w*)?"
    r"\W*(please|pls|por favor|porfa)?\W*$"
    r"|\bone more (\w+ )?(and|&) (i|i ll|i will|i m|im) (\w+ )?(block|report|sue)"
    r"|\bni se (te|les|le) ocurra\b"
    r"|\b(i|we) (do not|don t|dont) (do|accept|want|allow|take|respond to|reply to|answer|read) "
    r"(\w+ )?(text |sms |txt )?(marketing|promotions?|promos|ads|advertising|solicitations)\b"
    r"|\bno (acepto|aceptamos|recibo|recibimos|permito|permitimos|leo) (\w+ ){0,2}(mensajes|msjs|"
    r"textos|publicidad|promociones|llamadas|anuncios)\b"
    r"|^\W*(list |opt ?out |unsubscribe |number )?(removal|unsubscribe|opt ?out)( request)?"
    r"( please| pls| plz| thanks| thank you| asap)*\W*$"
    r"|^\W*(requesting|request) (removal|to be removed|to unsubscribe|unsubscribe|to opt out|"
    r"opt ?out)( from (the |your |this )?(list|texts|messages))?( please| thanks| thank you)*\W*$"
    r"|\b(otra vez|de nuevo|again) (con|with) (sus|los|tus|estos|esos|the|these|your|ur) "
    r"(mensajes|msjs|textos|promociones|publicidad|texts?|messages|msgs|promos|ads)\b"
    r"|\b(no|ya no) (los|las|te|les|lo|la) (soporto|aguanto|tolero|soportamos|aguantamos)\b"
    r"|\bno (soporto|aguanto|tolero) (sus|los|tus|estos|tantos) \w+"
    r"|\bque (lata|fastidio|pesad\w+|molest\w+|hartazgo|necios|necedad|ladilla|friega) (con|de)\b"
    r"|^\W*sin (publicidad|promociones|mensajes|anuncios|ofertas|spam)( por favor| porfa| gracias)*"
    r"\W*$"
    r"|\b(grateful|appreciate\w*|great|nice|thankful|happy|glad|prefer|rather|better) (it )?if "
    r"(you|u|y'?all) (\w+ ){0,2}(stop\w*|quit\w*|did not|do not|would not|never|"
    r"left me alone|leave me alone|remov\w*|took me off|take me off|unsub\w*)\b"
    r"|\b(be|being|to be|get|stay) left alone\b"
    r"|^\W*(this|it|that|these|they|this texting)('?s| is| are| r)? "
    r"(so |way |just |really |getting )?"
    r"(excessive|too much|ridiculous|insane|out of control|overkill|a lot|nonstop)\W*$"
    r"|\bwho (\w+ )?(signed|subscribed|enrolled|registered|added|put) "
    r"(me|us|my number|this number) (up|on|to|for|in)\b"
    r"|\b(my|our) (lawyer|attorney|abogado|abogada) (will|ll|is going to|is gonna|va a|shall) "
    r"(\w+ ){0,2}(be in touch|contact (you|u|them)|reach out|sue|deal with (you|this|it)|"
    r"be contacting|contactar\w*|demandar\w*)\b"
    r"|\b(get|be|being|getting|taken|removed) (off|out of|removed from|taken off|from) "
    r"(the|your|ur|this|that|these|those|all|any) (\w+ ){0,2}"
    r"(list|lists|program|database|group|chat)\b"
    r"|\b(good ?bye|bye|adios|chao|ciao) (forever|for good|for ever|for real|para siempre)\b"
    r"|^\W*(i'?m |i m |i am |we'?re |we re |we are )?not (looking|in the market|shopping|buying|"
    r"interested)"
    r"( for (a |an |any )?\w+( \w+)?)?\W*(thanks|thank you|thx|ty)?\W*$"
    r"|^\W*no\s*!+\W*$|^\W*(no\W+){2,}no\W*$"
    r"|\bya (estoy|estamos) (muy |bien |super )?(hart[oa]s?|hastiad[oa]s?)\b"
    r"|\b(me|nos) (tienen|tiene) (\w+ )?(hart[oa]s?|cansad[oa]s?|hastiad[oa]s?|hasta la madre)\b"
    r"|\b(never|not) (\w+ )?(shopped|ordered|bought|purchased|done business|signed up) (there|here|"
    r"with (you|u|y all|yall|them|your)|from (you|u|your|them)|at your)\b"
    r"|\b(not|no longer|never) (accepting|taking|reading|answering) (any |your |these )?(texts?|"
    r"txts?|messages|msgs|sms|promos|marketing|solicitations)\b"
    r"|\b(want|wants|need|needs) (nothing (to do )?with|no part (of|in)|none of) (this|these|you|"
    r"your|ur|it|that|them|y all|yall)\b"
    r"|\b(acab\w*|termin\w*|pon\w* (un )?(fin|alto)) (con|a) (est\w+|sus|los|las|tant\w+|tod\w+)"
    r"( \w+)?\b"
    r"|\b(retir\w*|revoc\w*|anul\w*|cancel\w*|quit\w*) (\w+ ){0,2}(consentimiento|permiso|"
    r"autorizacion)\b"
    r"|\b(texts?|txts?|messages|msgs|this|these|they|it) (are|is|r) not for (me|us)\b"
    r"|^\W*(it is |this is |that is |its |thats )?not for me\W*(thanks|thank you|thx)?\W*$"
    r"|\b(previous|old|former|last|prior) (owner|user|holder)\b"
    r"|\b(ya )?no (le |les )?pertenece\b"
    r"|\b(borr|elimin|quit|sa?qu|remuev)\w* (este|esto|ese)\W*$"
    r"|\b(not|never) (ask|asked|request|requested|want|wanted) to (be|get|receive) "
    r"(\w+ )?(texted|messaged|contacted|called|emailed|marketed|added|signed|subscribed|"
    r"these|this|any|texts|messages)\b"
    r"|\b7726\b|\b(reported|forwarded|reporting|forwarding|sent|report|forward) (it |this |you |"
    r"them |this number )?to (the )?(fcc|ftc|my carrier|carrier|att|verizon|t mobile|tmobile|bbb|"
    r"attorney general|authorities)\b"
    r"|\bdej\w* de (recibir|recibirlos|recibirlas)\b"
    r"|\bnadie (con ese nombre|se llama|llamad[oa])\b|\bno vive (aqui|ahi|alli|en este)\b"
    r"|\bno (hay|conozco a|conocemos a) nadie\b"
    r"|\b(nunca|no) (\w+ )?(pedi|solicite|pedimos|solicitamos) (esto|estos|estas|eso|"
    r"mensajes|nada|sus|que)\b"
    r"|\b(nunca|no) (\w+ )?(di|dimos|proporcione|comparti) (mi|este|nuestro) (numero|telefono|"
    r"celular|informacion|datos)\b"
)


# Rules of the form "A, then B later in the same sentence" ("why do you keep
# texting me", "too many of your texts"), kept out of _MESSAGE_RULES: written there
# as ``A[^.?!]*B``, each A was scanned to its sentence's end, so a long text with
# no full stop took time in the square of its length. Here only a sentence's first
# A is looked past (a B after a later A is after the first too), and the search
# for B stops at the sentence's end, so each character is read a bounded number of
# times. Each A can end only one way where it starts, so the first is the earliest.
_GAP_RULES = tuple(
    (re.compile(first), re.compile(then))
    for first, then in (
        (
            r"\bwhy\b",
            r"\b(texting|txting|texing|messaging|msging|msgin|contacting|calling|"
            r"emailing|sending|spamming|writing|hitting) (me|us|my|this)\b",
        ),
        (
            r"\bpor ?que\b",
            r"\b(me|nos) (siguen |sigue |continuan |estan |vuelven a )?"
            r"(escrib\w+|mand\w+|envi\w+|llam\w+|contact\w+|textea\w+|molest\w+)",
        ),
        (
            r"\b(too|so|way too) (many|much|often|frequent)\b",
            r"\b(texts?|txts?|messages|msgs|"
            r"texting|messaging|sms|notifications|alerts|emails|calls)\b",
        ),
        (
            r"\bnot (include|add|put|sign|enroll|subscribe|register|count) (me|us|my number)\b",
            r"\b(texts?|messages?|list|future|calls?|emails?|alerts?|program|campaign)\b",
        ),
        (
            r"\b(no|not|never|exclude|remove|without|stop|opt out of)\b",
            r"\bfuture "
            r"(texts?|txts?|messages|msgs|contact|emails?|calls?|notifications|communications?)\b",
        ),
        (r"\b(not|never|stop|quit|no more|dont)\b", r"\b(hit(ting)? (me|us) up)\b"),
        (
            r"\b(less|fewer|reduce|cut down|cut back|limit|lower)\b",
            r"\b(texts?|txts?|messages|"
            r"msgs|texting|messaging|notifications|alerts|emails|calls|frequency)\b",
        ),
    )
)
_SENTENCE_END = re.compile(r"[.?!]")


def _gap_rule(plain: str) -> bool:
    """Whether a sentence of ``plain`` has some rule's A and, after it, its B."""
    start = 0
    ends = [m.start() for m in _SENTENCE_END.finditer(plain)]
    for end in [*ends, len(plain)]:
        for first, then in _GAP_RULES:
            found = first.search(plain, start, end)
            if found and then.search(plain, found.end(), end):
                return True
        start = end + 1
    return False


# Every word the rules look for, as spelt: a token that is one of them is taken
# as it is, never "corrected" into another by edit distance.
_VOCABULARY = (
    frozenset(w for words in _LEXICON.values() for w in words)
    | _STRONG
    | _ENDERS
    | _ENOUGH
    | _CONTACT
    | _CONTACT_PAST
    | _SERVICE
    | _ME
    | _POSSESSIVE
    | _IDENT
    | _DEMONSTRATIVE
    | _COURTESY
    | _DESIRE
    | _LIKING
    | _DESIRE_OBJECTS
    | _NEGATION
    | _BETWEEN
    | _NOT_AFTER
    | _PESTER
    | _REMOVERS
    | _LOSERS
    | _TAKERS
    | _AVERSION
    | _ALONE_COMPLAINTS
    | _STOP_ASIDE
    | _STOP_PLACE
    | _ERRANDS
    | _DECLINING
    | _NOT_TYPOS
)
# Words a doubled letter may hide: "sttop", "blockeed" (never "noon" as "non").
_TYPO_TARGETS = (
    frozenset(_FUZZY_TARGETS)
    | frozenset(_FUZZY_TARGETS_4)
    | _STRONG
    | _ENDERS
    | _PESTER
    | _REMOVERS
    | _DESIRE
    | _AVERSION
)
_LONGEST_KNOWN = max(map(len, (*_LEXICON, *_TYPO_TARGETS, *_VOCABULARY)))
"""The longest word a token squeezed or respelt is looked up as (``_read_whole``)."""
_LONGEST_FUZZY = max(map(len, (*_FUZZY_TARGETS, *_FUZZY_TARGETS_4)))
"""The longest word a token may be read as misspelling (``_fuzzed``)."""
