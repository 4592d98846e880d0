/* wordfreq: counts how often each word occurs on standard input.
 *
 * A word is a run of ASCII letters, compared without regard to case; anything else separates words.
 * Words longer than 31 letters are cut to their first 31. Prints the totals, then one "count word" line
 * per distinct word, most frequent first and alphabetically among equals.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORDS 512
#define MAX_LEN 32

struct entry {
    char word[MAX_LEN];
    int count;
};

static struct entry table[MAX_WORDS];
static int n_entries = 0;

static void add_word(const char *word) {
    for (int i = 0; i < n_entries; i++) {
        if (strcmp(table[i].word, word) == 0) {
            table[i].count++;
            return;
        }
    }
    if (n_entries < MAX_WORDS) {
        strcpy(table[n_entries].word, word);
        table[n_entries].count = 1;
        n_entries++;
    }
}

static int by_count_then_word(const void *a, const void *b) {
    const struct entry *x = a;
    const struct entry *y = b;
    if (x->count != y->count)
        return y->count - x->count;
    return strcmp(x->word, y->word);
}

int main(void) {
    char buf[MAX_LEN];
    int len = 0;
    int total = 0;
    int c;

    while ((c = getchar()) != EOF) {
        if (isalpha(c)) {
            if (len < MAX_LEN - 1)
                buf[len++] = (char)tolower(c);
        } else if (len > 0) {
            buf[len] = '\0';
            add_word(buf);
            total++;
            len = 0;
        }
    }
    if (len > 0) {
        buf[len] = '\0';
        add_word(buf);
        total++;
    }

    qsort(table, n_entries, sizeof table[0], by_count_then_word);
    printf("%d words, %d distinct\n", total, n_entries);
    for (int i = 0; i < n_entries; i++)
        printf("%d %s\n", table[i].count, table[i].word);
    return 0;
}
