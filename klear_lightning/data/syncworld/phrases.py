"""What SyncWorld's faces say: short everyday sentences (`speech_single`) and three-line exchanges
(`speech_multi`, one line per turn).

Chosen so that the shipped recogniser (Whisper tiny.en) can score them: common words in natural
word order (its language model helps it there, where it guessed at isolated confusable words such
as "pepper paper"), no number words (it writes digits), no names, no phrase a recogniser
routinely contracts ("it is" -> "it's"), lowercase without punctuation.
"""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "good morning everyone", "thank you very much", "see you later", "how are you today", "come here please",
    "open the door", "close the window", "where is my hat", "the cat is sleeping", "the dog is barking",
    "i like green apples", "the weather is cold", "the rain has stopped", "turn on the light", "please sit down",
    "what time is dinner", "we love music", "the baby is laughing", "look at the sky", "the water is warm",
    "my shoes are wet", "pass me the salt", "the bird can sing", "this is my house", "the car is very fast",
    "read the book", "wash your hands", "the soup is hot", "where are you going", "the train is late",
    "she likes to dance", "he is very tall", "the room is dark", "call me tomorrow", "the coffee is ready",
    "clean your room", "i lost my keys", "the flowers smell nice", "my phone is broken", "the garden is green",
    "the children are playing", "please close the door", "the milk is cold", "the snow is falling", "listen to me",
    "the movie was great", "where is the station", "can you help me", "the shop is closed", "i want some water",
    "the sky is blue", "have a nice day", "welcome to the party", "the food is delicious", "walk to the park",
    "the window is open", "my sister is here", "i forgot my bag", "the river is deep", "the night is quiet",
    "bring me a chair", "the tea is sweet", "we won the game", "he drives a truck", "the music is loud",
    "she reads every night", "the house is empty", "please wait here", "the cake is ready", "the lights are off",
    "the door is locked", "my hands are cold", "the moon is bright", "the grass is wet", "the kitchen is clean",
    "the bus is coming", "we need more bread", "the horse is running", "the ball is red", "the fish can swim",
    "my brother plays guitar", "the boat is small", "the paper is white", "the road is long",
)  # fmt: skip

EXCHANGES: tuple[tuple[str, str, str], ...] = (
    ("hello there", "good morning", "how are you"),
    ("how are you", "very well", "glad to hear it"),
    ("are you ready", "almost", "hurry up"),
    ("is it raining", "not today", "good news"),
    ("want some tea", "yes please", "here you go"),
    ("come with me", "right now", "of course"),
    ("where is it", "over there", "thank you"),
    ("good job", "thanks a lot", "well done"),
    ("is he home", "not yet", "call him"),
    ("can you swim", "of course", "show me"),
    ("who is that", "my brother", "hello"),
    ("see you soon", "take care", "goodbye"),
    ("happy birthday", "thank you", "have some cake"),
    ("is it cold", "very cold", "wear a coat"),
    ("which one", "the red one", "good choice"),
    ("excuse me", "yes please", "where is the bank"),
    ("look outside", "snow again", "how lovely"),
    ("do you like it", "very much", "me too"),
    ("hurry up", "coming", "the bus is here"),
    ("what a day", "very busy", "time for bed"),
    ("hello", "hi there", "nice to meet you"),
    ("open the door", "sure", "thank you"),
    ("are you tired", "very tired", "go to sleep"),
    ("lunch is ready", "great", "smells good"),
    ("where are my keys", "on the table", "found them"),
)  # fmt: skip
