"""Small synthetic corpora for the curation tests: varied sentences on distinct topics, so
embeddings separate them and MinHash does not see them as near-duplicates."""

from __future__ import annotations

SPORT = [
    "The striker scored twice in the second half of the derby.",
    "Our goalkeeper saved a penalty in the final minute.",
    "She won the marathon in under two and a half hours.",
    "The tennis final went to a fifth-set tie-break.",
    "He was sent off for a late tackle on the winger.",
    "The cycling team attacked on the last mountain climb.",
    "A last-second three-pointer won the basketball game.",
    "The rugby side kicked a drop goal to take the lead.",
    "The swimmer broke the world record in the relay.",
    "Fans stormed the pitch after the cup victory.",
    "The batsman hit a century before lunch on day two.",
    "The coach was fired after five straight defeats.",
    "The boxer knocked out the champion in round three.",
    "The hockey team scored on a power play in overtime.",
    "Our sprinter false-started and was disqualified.",
    "The golfer sank a long putt on the eighteenth hole.",
    "Transfer fees for young defenders keep rising this season.",
    "The referee reviewed the offside call on the video screen.",
    "The skier crashed on the downhill course in training.",
    "The volleyball squad won the championship in straight sets.",
]
FOOD = [
    "Simmer the tomato sauce with garlic for twenty minutes.",
    "Knead the bread dough until it is smooth and elastic.",
    "Whisk the eggs with sugar until pale and fluffy.",
    "Roast the vegetables at two hundred degrees until golden.",
    "Season the steak generously with salt before grilling.",
    "Fold the melted chocolate gently into the cream.",
    "Marinate the chicken overnight in yogurt and spices.",
    "Boil the pasta in well salted water until al dente.",
    "Chop the onions finely and fry them in butter.",
    "Let the cake cool completely before icing it.",
    "Toast the cumin seeds in a dry pan to release their aroma.",
    "Blend the soup until silky and add a splash of cream.",
    "Rinse the rice until the water runs clear.",
    "Grate some parmesan over the risotto before serving.",
    "Slice the cucumbers thinly for the pickles.",
    "Bake the pie crust blind before adding the filling.",
    "Squeeze half a lemon over the grilled fish.",
    "Stir the caramel constantly so that it does not burn.",
    "Steam the dumplings in a bamboo basket for ten minutes.",
    "Sprinkle fresh basil over the pizza after baking.",
]
WEATHER = [
    "Heavy rain is expected across the north tomorrow.",
    "A heatwave will push temperatures above forty degrees.",
    "Snowfall closed the mountain passes overnight.",
    "Strong winds brought down power lines along the coast.",
    "Fog will clear by late morning in most valleys.",
    "A thunderstorm warning is in place for the afternoon.",
]
FINANCE = [
    "The central bank raised interest rates by a quarter point.",
    "Shares fell sharply after the profit warning.",
    "The company reported record quarterly revenue.",
    "Bond yields climbed to their highest level in a decade.",
    "Inflation slowed for the third month in a row.",
    "The merger was blocked by competition regulators.",
]
