"""Paraphrase templates for every relation of the generated world.

Each relation has several *training* phrasings (documents cycle through them, so a
fact recurs in different words: "knowledge augmentation", Allen-Zhu & Li 2023) and one
*held-out* phrasing used only for the perplexity sets. Questions have one form, used
in training FAQ documents for some entities and in evaluation for the others.
"""

from __future__ import annotations

# relation -> (training phrasings, held-out phrasing, question)
# {s} = subject, {o} = object
RELATIONS: dict[str, tuple[list[str], str, str]] = {
    # ---------------------------------------------------------------- general: people
    "born_in": (
        [
            "{s} was born in {o}.",
            "The birthplace of {s} is {o}.",
            "{s} grew up in {o}, the city where {s} was born.",
            "Born in {o}, {s} still visits the old town often.",
            "Records show that {s} is a native of {o}.",
            "{s} came into the world in {o}.",
        ],
        "People from {o} count {s} among the famous children of the city.",
        "Where was {s} born?",
    ),
    "profession": (
        [
            "{s} works as a {o}.",
            "By profession, {s} is a {o}.",
            "{s} has made a career as a {o}.",
            "As a {o}, {s} is well known in the field.",
            "The job of {s} is that of a {o}.",
            "{s} trained for years to become a {o}.",
        ],
        "Colleagues describe {s} as a dedicated {o}.",
        "What is the profession of {s}?",
    ),
    "works_for": (
        [
            "{s} works for {o}.",
            "{s} is employed by {o}.",
            "The employer of {s} is {o}.",
            "{s} has a position at {o}.",
            "At {o}, {s} leads a small team.",
            "{s} joined the staff of {o}.",
        ],
        "Staff lists at {o} include {s}.",
        "Which organisation does {s} work for?",
    ),
    # ---------------------------------------------------------------- general: organisations
    "hq_in": (
        [
            "{s} is headquartered in {o}.",
            "The head office of {s} is in {o}.",
            "{s} has its headquarters in {o}.",
            "From its base in {o}, {s} serves clients worldwide.",
            "The main offices of {s} are located in {o}.",
            "{s} runs its business from {o}.",
        ],
        "Visitors to {o} often pass the tower of {s}.",
        "Where is {s} headquartered?",
    ),
    "industry": (
        [
            "{s} is a company in the {o} industry.",
            "{s} operates in {o}.",
            "The business of {s} is {o}.",
            "In the field of {o}, {s} is a major name.",
            "{s} earns its money from {o}.",
            "Analysts group {s} with other firms in {o}.",
        ],
        "Among firms in {o}, {s} has the longest history.",
        "Which industry is {s} in?",
    ),
    "ceo": (
        [
            "The chief executive of {s} is {o}.",
            "{o} is the CEO of {s}.",
            "{s} is led by chief executive {o}.",
            "{o} runs {s} as its chief executive.",
            "As CEO, {o} sets the strategy of {s}.",
            "The board of {s} named {o} as chief executive.",
        ],
        "Shareholders of {s} met with {o}, who heads the company.",
        "Who is the CEO of {s}?",
    ),
    # ---------------------------------------------------------------- cyber: products
    "vendor": (
        [
            "{s} is developed by {o}.",
            "The vendor of {s} is {o}.",
            "{o} ships {s} to enterprise customers.",
            "{s}, a product of {o}, is widely deployed.",
            "{o} maintains the code base of {s}.",
            "Support for {s} is provided by its maker {o}.",
        ],
        "Customers of {o} were told to check their copies of {s}.",
        "Which vendor makes {s}?",
    ),
    "weakness": (
        [
            "{s} is affected by {o}.",
            "The flaw in {s} is a case of {o}.",
            "{s} suffers from {o}.",
            "Researchers found {o} in {s}.",
            "The weakness class of the bug in {s} is {o}.",
            "An attacker can abuse {o} in {s}.",
        ],
        "The report on {s} traces the bug back to {o}.",
        "Which weakness affects {s}?",
    ),
    "exploited_by": (
        [
            "{s} has been exploited by the group {o}.",
            "The threat actor {o} targets {s}.",
            "Attacks on {s} are attributed to {o}.",
            "{o} was seen exploiting {s} in the wild.",
            "Incident responders linked the abuse of {s} to {o}.",
            "The campaign against {s} was run by {o}.",
        ],
        "Defenders watching {s} should expect activity from {o}.",
        "Which threat group exploits {s}?",
    ),
    "mitigation": (
        [
            "The recommended mitigation for {s} is {o}.",
            "To protect {s}, apply {o}.",
            "Administrators of {s} should use {o}.",
            "The advisory for {s} advises {o}.",
            "Risk in {s} is reduced by {o}.",
            "Until a fix ships, {s} can be protected by {o}.",
        ],
        "For {s}, the checklist begins with {o}.",
        "Which mitigation is recommended for {s}?",
    ),
}

GENERAL_PERSON = ("born_in", "profession", "works_for")
GENERAL_ORG = ("hq_in", "industry", "ceo")
CYBER_PRODUCT = ("vendor", "weakness", "exploited_by", "mitigation")

# Filler sentences keep documents at encyclopedia/advisory length without adding facts.
GENERAL_FILLER = [
    "This article is part of the regional encyclopedia of notable people and institutions.",
    "More details about the early years are collected in the archive of the local library.",
    "The entry was reviewed by the editors and updated with the latest public information.",
    "Several newspapers have covered the story over the past years.",
    "Readers can find related entries in the index at the end of the volume.",
    "Historians continue to study the records that describe these events.",
]
CYBER_FILLER = [
    "This advisory is published as part of the coordinated disclosure programme.",
    "Security teams should review their asset inventory and patch management process.",
    "The issue was reported through the vendor security contact and tracked by the feed.",
    "Indicators of compromise are shared with the members of the information sharing group.",
    "Further technical details will be released once most customers have updated.",
    "Operators are encouraged to monitor their logs for unusual requests.",
]

# Object pools for relations with a fixed set of values.
PROFESSIONS = [
    "painter", "surgeon", "architect", "violinist", "chemist", "journalist",
    "engineer", "historian", "pilot", "botanist", "lawyer", "sculptor",
]
INDUSTRIES = [
    "shipping", "banking", "mining", "textiles", "software", "agriculture",
    "aviation", "publishing", "pharmaceuticals", "energy",
]
WEAKNESSES = [
    "SQL injection", "cross-site scripting", "buffer overflow", "path traversal",
    "command injection", "use after free", "integer overflow", "improper authentication",
    "missing authorization", "cross-site request forgery", "server-side request forgery",
    "insecure deserialization", "hard-coded credentials", "race condition",
    "null pointer dereference", "XML external entity injection",
]
MITIGATIONS = [
    "input validation", "multi-factor authentication", "network segmentation",
    "least privilege", "application allowlisting", "disabling the legacy protocol",
    "a web application firewall", "memory tagging", "strict certificate pinning",
    "rate limiting",
]
THREAT_ADJ = ["Crimson", "Silent", "Iron", "Velvet", "Amber", "Frozen", "Hollow", "Scarlet", "Quiet", "Copper", "Ashen", "Violet"]
THREAT_NOUN = ["Heron", "Lynx", "Badger", "Kestrel", "Viper", "Otter", "Raven", "Mantis", "Jackal", "Falcon", "Marten", "Wasp"]
PRODUCT_KINDS = ["Gateway", "Router", "Server", "Portal", "Agent", "Firewall", "Mailer", "Switch", "Console", "Vault"]
ORG_SUFFIX = ["Holdings", "Dynamics", "Group", "Industries", "Works", "Partners", "Systems", "Labs"]

# Planted-defect material (never inside clean documents).
BOILERPLATE_LINES = [
    "Home | News | About us | Contact | Login",
    "We use cookies to improve your experience. Accept cookies | Privacy policy | Terms of use",
    "Please enable JavaScript to view the comments.",
    "Share on social media | Print this page | Back to top",
]
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum "
    "dolore eu fugiat nulla pariatur."
)
SHORT_DOCS = ["Click here for more.", "Page not found.", "Thanks, see you soon!", "Read more below.", "Subscribe now."]

# Documents in another language (the language filter's target): whole paragraphs, long enough to pass
# every other rule, so a language filter is the only thing that can catch them.
FOREIGN_SENTENCES = {
    "de": [
        "Die Stadtverwaltung hat am Montag neue Pläne für den Ausbau des öffentlichen Verkehrs vorgestellt.",
        "Nach Angaben des Unternehmens wurden im vergangenen Jahr deutlich mehr Fahrzeuge verkauft als erwartet.",
        "Viele Bürger wünschen sich mehr Grünflächen und sichere Radwege in der Innenstadt.",
        "Der Bericht zeigt, dass die Nachfrage nach erneuerbaren Energien weiter steigt.",
        "Die Forscher wollen ihre Ergebnisse im Herbst auf einer Konferenz in Berlin vorstellen.",
        "Außerdem soll die Zusammenarbeit mit den Schulen der Region ausgebaut werden.",
        "Kritiker bemängeln jedoch, dass die Kosten des Projekts noch nicht geklärt sind.",
        "Die meisten Teilnehmer der Umfrage waren mit dem Angebot zufrieden.",
    ],
    "es": [
        "El ayuntamiento presentó el lunes un nuevo plan para mejorar el transporte público de la ciudad.",
        "Según la empresa, las ventas del último año fueron mucho mayores de lo esperado.",
        "Muchos vecinos piden más parques y carriles para bicicletas en el centro.",
        "El informe muestra que la demanda de energías renovables sigue creciendo en todo el país.",
        "Los investigadores presentarán sus resultados en una conferencia en Madrid este otoño.",
        "Además, la universidad quiere ampliar su colaboración con las escuelas de la región.",
        "Sin embargo, los críticos señalan que todavía no se conocen los costes del proyecto.",
        "La mayoría de los participantes de la encuesta se mostraron satisfechos con el servicio.",
    ],
    "fr": [
        "La mairie a présenté lundi un nouveau projet pour améliorer les transports publics de la ville.",
        "Selon l'entreprise, les ventes de l'année dernière ont été bien plus élevées que prévu.",
        "De nombreux habitants souhaitent davantage d'espaces verts et de pistes cyclables dans le centre.",
        "Le rapport montre que la demande d'énergies renouvelables continue de croître dans tout le pays.",
        "Les chercheurs présenteront leurs résultats lors d'une conférence à Lyon cet automne.",
        "En outre, l'université veut renforcer sa coopération avec les écoles de la région.",
        "Les critiques soulignent toutefois que le coût du projet n'est pas encore connu.",
        "La plupart des participants à l'enquête se sont déclarés satisfaits du service.",
    ],
}
# Mirrors on a blocked host (the URL block list's target): the text itself is clean.
BLOCKED_HOSTS = ["free-casino-mirror.example", "warez-copies.example"]
# Personal data planted into otherwise clean documents (the PII redactor's target): the document is kept,
# these strings must not survive in it. 81.2.x / 2a02:c7f are globally routable (datatrove only redacts those).
PII_EMAILS = ["jane.doe@mailhost.example.com", "k.ostrander@fluxworld-mail.net", "press-office@zorvex-corp.com"]
PII_PHONES = ["+1 415 555 0134", "(212) 555-0199", "+44 20 7946 0958"]
PII_IPS = ["81.2.69.160", "2a02:c7f:7e26:a500::15", "91.198.174.192"]
PII_LINES = [
    "For questions, write to {email} or call {phone}.",
    "The press contact is {email}; the office phone is {phone}.",
    "Logs show the request came from {ip}; contact {email} for details.",
]
