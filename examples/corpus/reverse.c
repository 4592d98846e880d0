/* reverse: prints every line of standard input backwards, then how many lines and characters it read.
 *
 * Lines are reversed byte by byte (ASCII text in, ASCII text out); the newline stays at the end.
 */
#include <stdio.h>
#include <string.h>

#define MAX_LINE 1024

static void reverse_in_place(char *s, size_t n) {
    size_t i = 0;
    size_t j = n;
    while (i + 1 < j) {
        char t = s[i];
        s[i] = s[j - 1];
        s[j - 1] = t;
        i++;
        j--;
    }
}

int main(void) {
    char line[MAX_LINE];
    int lines = 0;
    long chars = 0;

    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        reverse_in_place(line, n);
        printf("%s\n", line);
        lines++;
        chars += (long)n;
    }
    printf("%d lines, %ld characters\n", lines, chars);
    return 0;
}
