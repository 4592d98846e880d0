/* rpn: evaluates an integer expression in reverse Polish notation given as arguments.
 *
 *     rpn 3 4 + 2 '*'      prints 14
 *
 * Operators: + - * / % (C semantics: division truncates toward zero) and "neg". Prints the one value
 * left on the stack, or a line starting with "error:". The exit status is 0 either way: the output
 * alone says what happened.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STACK_MAX 64

static long stack[STACK_MAX];
static int top = 0;

static int push(long v) {
    if (top == STACK_MAX)
        return 0;
    stack[top++] = v;
    return 1;
}

static int pop(long *v) {
    if (top == 0)
        return 0;
    *v = stack[--top];
    return 1;
}

static int is_number(const char *s) {
    if (*s == '-' || *s == '+')
        s++;
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *tok = argv[i];
        long a, b;

        if (is_number(tok)) {
            if (!push(strtol(tok, NULL, 10))) {
                printf("error: stack overflow\n");
                return 0;
            }
            continue;
        }
        if (strcmp(tok, "neg") == 0) {
            if (!pop(&a)) {
                printf("error: stack underflow at '%s'\n", tok);
                return 0;
            }
            push(-a);
            continue;
        }
        if (strlen(tok) != 1 || strchr("+-*/%", tok[0]) == NULL) {
            printf("error: unknown token '%s'\n", tok);
            return 0;
        }
        if (!pop(&b) || !pop(&a)) {
            printf("error: stack underflow at '%s'\n", tok);
            return 0;
        }
        switch (tok[0]) {
        case '+':
            push(a + b);
            break;
        case '-':
            push(a - b);
            break;
        case '*':
            push(a * b);
            break;
        default:
            if (b == 0) {
                printf("error: division by zero\n");
                return 0;
            }
            push(tok[0] == '/' ? a / b : a % b);
            break;
        }
    }
    if (top != 1) {
        printf("error: %d values left on the stack\n", top);
        return 0;
    }
    printf("%ld\n", stack[0]);
    return 0;
}
